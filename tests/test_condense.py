"""Every condensation method on small real Fashion-MNIST subsets: shapes, labels, determinism, loss decrease,
non-IID sites, DSA and the ``condex condense`` command."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from client.condense import condense, condenser_names, get_condenser
from client.condense.gm import matching_distance
from shared.augment.dsa import SiameseAugment
from shared.config.condense import CondenseConfig
from shared.data import LabeledImages, few_shot_indices
from shared.errors import ConfigError, UnknownNameError
from shared.payload import CondensedPayload, PayloadSpec, validate_payload

SMALL = {"model_width": 8, "batch_real": 8, "iterations": 3, "outer_loop": 2, "inner_loop": 1}
SETTINGS = {
    "dm": {},
    "gm": {},
    "real": {},
    "dp-dm": {"noise_multiplier": 1.0},
    "dp-dos": {"noise_multiplier": 1.0, "dos_releases": 2},
    "dp-gm": {"noise_multiplier": 1.0},
}
SPEC = PayloadSpec(num_classes=10, image_shape=(1, 28, 28), max_ipc=10)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def site(fmnist_train: LabeledImages) -> LabeledImages:
    return fmnist_train.subset(few_shot_indices(fmnist_train.labels.numpy(), 40, seed=2))


@pytest.fixture(scope="module")
def small_site(site: LabeledImages) -> LabeledImages:
    """Three classes: gradient matching loops over classes with a double backward each, so keep it short."""
    return site.subset(np.flatnonzero(site.labels.numpy() < 3))


def config(method: str, **changes: object) -> CondenseConfig:
    gm_only = {} if "gm" in method else {"outer_loop": 0, "inner_loop": 0}
    return CondenseConfig(**{"method": method, "ipc": 2, **SMALL, **gm_only, **SETTINGS[method], **changes})


def test_registry_lists_every_method() -> None:
    assert condenser_names() == ["d2m", "dm", "dp-d2m", "dp-dm", "dp-dos", "dp-gendd", "dp-gm", "gendd", "gm", "real"]
    with pytest.raises(UnknownNameError, match="d2m, dm, dp-d2m"):
        get_condenser("mtt")
    with pytest.raises(ConfigError, match=r"condense\.method"):
        CondenseConfig(method="mtt").validate()


@pytest.mark.parametrize("method", sorted(SETTINGS))
def test_method_output_and_determinism(site: LabeledImages, small_site: LabeledImages, method: str) -> None:
    data, classes = (small_site, 3) if "gm" in method else (site, 10)
    changes = {"iterations": 1} if "gm" in method else {}
    first = condense(data, config(method, **changes), progress=False)
    again = condense(data, config(method, **changes), progress=False)
    other = condense(data, config(method, **{**changes, "seed": 1, "iterations": 1}), progress=False)
    assert first.images.shape == (2 * classes, 1, 28, 28) and first.images.dtype == torch.float32
    assert first.class_counts() == [2] * classes + [0] * (10 - classes)
    assert float(first.images.min()) >= 0.0 and float(first.images.max()) <= 1.0
    if method.startswith("dp-"):  # DP noise comes from OS entropy: the same seed must not repeat it
        assert not torch.equal(first.images, again.images)
    else:
        assert torch.equal(first.images, again.images) and torch.equal(first.labels, again.labels)
    assert not torch.equal(first.images, other.images)
    meta = first.meta
    local = [40] * classes + [0] * (10 - classes)
    assert (meta.method, meta.ipc, meta.local_class_counts, meta.image_shape) == (method, 2, local, (1, 28, 28))
    assert (meta.epsilon is not None) == method.startswith("dp-")
    validate_payload(CondensedPayload.from_arrays(first.to_arrays(), first.wire_meta()), SPEC)


def test_real_returns_actual_training_images(site: LabeledImages) -> None:
    payload = condense(site, config("real"), progress=False)
    pixels = torch.round(payload.images * 255).to(torch.uint8)
    flat = site.images.reshape(len(site), -1)
    for image, label in zip(pixels, payload.labels, strict=True):
        match = (flat == image.reshape(1, -1)).all(dim=1)
        assert bool(match.any()) and int(site.labels[match][0]) == int(label)


@pytest.mark.parametrize("method,sigma", [("dm", 0.0), ("dp-dm", 0.3)])
def test_distribution_matching_loss_decreases(small_site: LabeledImages, method: str, sigma: float) -> None:
    cfg = config(method, iterations=16, init="noise", batch_real=16, model_width=16, dsa=False, lr_img=5.0,
                 noise_multiplier=sigma)
    losses = condense(small_site, cfg, progress=False).extra["losses"]
    assert len(losses) == 16
    assert np.mean(losses[-4:]) < 0.8 * np.mean(losses[:4])


def test_gradient_matching_loss_decreases(small_site: LabeledImages) -> None:
    two_classes = small_site.subset(np.flatnonzero(small_site.labels.numpy() < 2))
    cfg = config("gm", iterations=4, outer_loop=3, inner_loop=1, init="noise", batch_real=16, model_width=8,
                 dsa=False, lr_img=1.0)
    losses = condense(two_classes, cfg, progress=False).extra["losses"]
    assert np.mean(losses[-2:]) < np.mean(losses[:2])


def test_matching_distance_is_zero_for_parallel_gradients_and_skips_biases() -> None:
    real = [torch.randn(4, 3, 3, 3), torch.randn(4)]
    assert float(matching_distance(real, [2.5 * real[0], torch.randn(4)])) == pytest.approx(0.0, abs=1e-5)
    assert float(matching_distance(real, [-real[0], real[1]])) == pytest.approx(8.0, abs=1e-4)  # 4 channels x 2


def test_non_iid_site_only_sends_classes_it_holds(site: LabeledImages) -> None:
    keep = np.flatnonzero(np.isin(site.labels.numpy(), [1, 4, 7]))
    keep = np.concatenate([keep[site.labels.numpy()[keep] != 7], keep[site.labels.numpy()[keep] == 7][:1]])
    local = site.subset(keep)  # classes 1 and 4 with 40 images, class 7 with a single image
    payload = condense(local, config("dm", ipc=3), progress=False)
    counts = payload.class_counts()
    assert counts[1] == 3 and counts[4] == 3 and counts[7] == 1 and sum(counts) == 7
    assert payload.meta.local_class_counts == [0, 40, 0, 0, 40, 0, 0, 1, 0, 0]
    validate_payload(payload, SPEC)


def test_time_budget_stops_early(site: LabeledImages) -> None:
    payload = condense(site, config("dm", iterations=10_000, time_budget_s=0.5), progress=False)
    assert 1 <= payload.meta.iterations < 10_000


def test_dsa_is_siamese_and_differentiable() -> None:
    augment = SiameseAugment(generator=torch.Generator().manual_seed(0))
    x = torch.randn(6, 1, 28, 28, requires_grad=True)
    groups = torch.tensor([0, 0, 1, 1, 2, 2])
    for _ in range(12):  # every operation is drawn in a dozen calls with this seed
        params = augment.sample(3, (28, 28))
        same = torch.cat([x[:1], x[:1], x[2:3], x[2:3], x[4:5], x[4:5]])
        out = augment.apply(same, params, groups)
        assert torch.allclose(out[0::2], out[1::2])  # same group, same input -> same output
        out.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_cli_writes_payload_and_grid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from shared.cli import main

    output = tmp_path / "site3.safetensors"
    code = main(["condense", "--partition", "dirichlet", "--partition-id", "3", "--method", "dm", "--ipc", "2",
                 "--iterations", "2", "--set", "condense.model_width=8", "--set", "condense.batch_real=8",
                 "--output", str(output), "--quiet"])
    assert code == 0 and output.exists() and output.with_suffix(".png").stat().st_size > 0
    payload = CondensedPayload.load(output)
    validate_payload(payload, SPEC)
    held = [c for c, n in enumerate(payload.meta.local_class_counts) if n > 0]
    assert sorted(set(payload.labels.tolist())) == held
    warning = capsys.readouterr().err  # a non-DP payload is never sent silently: the audit figure is named
    assert "condense.method=dm is not differentially private" in warning and "docs/privacy.md#audit" in warning


def test_cli_reports_config_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from shared.cli import main

    code = main(["condense", "--method", "real", "--epsilon", "1", "--output", str(tmp_path / "x.safetensors")])
    assert code == 2
    assert "cannot be differentially private" in capsys.readouterr().err


def test_config_method_list_matches_the_registry() -> None:
    """shared/ must not import client/: the config keeps the method names, this keeps them in step."""
    from client.condense import condenser_names
    from shared.config.condense import METHODS

    assert sorted(METHODS) == sorted(condenser_names())
