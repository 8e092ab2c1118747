"""DP accounting and mechanisms: calibration, monotonicity, agreement with Opacus, noise scale, clipping."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from opacus.accountants import RDPAccountant

import client.condense.dp_dm as dp_dm_module
from client.condense import condense
from client.condense.dp_gm import _clipped_sum
from shared.config.condense import CondenseConfig
from shared.data import LabeledImages, few_shot_indices
from shared.errors import ConfigError, DataError
from shared.privacy import (
    calibrate_noise_multiplier,
    clip_rows,
    epsilon_for,
    make_accountant,
    noisy_class_sums,
    poisson_mask,
)

TINY = {"model_width": 8, "batch_real": 4, "iterations": 4}  # q = 4 * 10 / 1000 = 0.04


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def site(fmnist_train: LabeledImages) -> LabeledImages:
    return fmnist_train.subset(few_shot_indices(fmnist_train.labels.numpy(), 100, seed=1))


def opacus_epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> float:
    """Independent reference: Opacus' own accountant fed one step() per release."""
    accountant = RDPAccountant()
    for _ in range(steps):
        accountant.step(noise_multiplier=noise_multiplier, sample_rate=sample_rate)
    return accountant.get_epsilon(delta)


def test_rdp_accountant_equals_opacus_over_a_mixed_sequence() -> None:
    ours = make_accountant("rdp")
    reference = RDPAccountant()
    for sigma, q, steps in [(1.1, 0.01, 30), (0.8, 0.05, 7), (1.1, 0.01, 12)]:
        ours.step(sigma, q, steps)
        for _ in range(steps):
            reference.step(noise_multiplier=sigma, sample_rate=q)
    assert ours.epsilon(1e-5) == pytest.approx(reference.get_epsilon(1e-5), rel=1e-12)
    assert sum(m.steps for m in ours.history) == 49


def test_epsilon_increases_with_steps() -> None:
    values = [epsilon_for(1.0, 0.02, steps, 1e-5) for steps in (1, 10, 100, 1000)]
    assert all(a < b for a, b in itertools.pairwise(values))
    assert make_accountant().epsilon(1e-5) == 0.0


def test_calibration_hits_the_target_from_below() -> None:
    sigma = calibrate_noise_multiplier(2.0, 1e-5, sample_rate=0.02, steps=500)
    achieved = epsilon_for(sigma, 0.02, 500, 1e-5)
    assert achieved <= 2.0
    assert achieved > 2.0 - 0.05  # tolerance 0.01 in the search; not wastefully noisy
    assert calibrate_noise_multiplier(1.0, 1e-5, 0.02, 500) > sigma  # a smaller epsilon needs more noise


def test_calibration_rejects_bad_input() -> None:
    with pytest.raises(ConfigError, match="sample_rate"):
        calibrate_noise_multiplier(1.0, 1e-5, sample_rate=1.5, steps=10)
    with pytest.raises(ConfigError, match="epsilon"):
        calibrate_noise_multiplier(0.0, 1e-5, sample_rate=0.1, steps=10)


def test_clip_rows_bounds_every_row_and_keeps_small_ones() -> None:
    rows = torch.cat([torch.randn(50, 20) * 100, torch.randn(5, 20) * 1e-3])
    clipped = clip_rows(rows, 2.0)
    assert float(clipped.norm(dim=1).max()) <= 2.0 + 1e-5
    assert torch.allclose(clipped[-5:], rows[-5:])
    assert torch.allclose(clipped[0] / clipped[0].norm(), rows[0] / rows[0].norm(), atol=1e-6)  # direction kept


def test_noise_std_is_multiplier_times_clip() -> None:
    generator = torch.Generator().manual_seed(0)
    sums = noisy_class_sums(torch.zeros(4, 50_000), torch.tensor([0, 0, 1, 1]), 2, clip=0.7, noise_multiplier=1.3,
                            generator=generator)
    assert float(sums.std()) == pytest.approx(1.3 * 0.7, rel=0.02)
    assert float(sums.mean()) == pytest.approx(0.0, abs=0.01)


def test_noisy_class_sums_clip_each_record_before_summing() -> None:
    values = torch.randn(6, 10) * 50
    groups = torch.tensor([0, 0, 0, 1, 1, 2])
    sums = noisy_class_sums(values, groups, 3, clip=1.0, noise_multiplier=1e-9)
    assert sums[2].norm().item() == pytest.approx(1.0, abs=1e-5)  # one record of norm ~50 contributes exactly clip
    assert all(n <= c + 1e-4 for n, c in zip(sums.norm(dim=1).tolist(), [3, 2, 1], strict=True))


def test_poisson_mask_rate() -> None:
    mask = poisson_mask(100_000, 0.03, torch.Generator().manual_seed(0))
    assert mask.float().mean().item() == pytest.approx(0.03, rel=0.05)


def test_dp_dm_noise_matches_the_calibrated_multiplier(site: LabeledImages, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[float, float]] = []
    original = dp_dm_module.noisy_class_sums

    def spy(values: torch.Tensor, groups: torch.Tensor, num_groups: int, clip: float, noise_multiplier: float,
            generator: torch.Generator | None = None) -> torch.Tensor:
        seen.append((clip, noise_multiplier))
        return original(values, groups, num_groups, clip, noise_multiplier, generator)

    monkeypatch.setattr(dp_dm_module, "noisy_class_sums", spy)
    cfg = CondenseConfig(method="dp-dm", ipc=2, epsilon=1.0, clip=0.5, **TINY)
    payload = condense(site, cfg, progress=False)
    meta = payload.meta
    expected_sigma = calibrate_noise_multiplier(1.0, cfg.delta, meta.sample_rate, TINY["iterations"])
    assert len(seen) == TINY["iterations"] == meta.dp_steps
    assert all(c == 0.5 and s == pytest.approx(expected_sigma) for c, s in seen)
    assert meta.noise_multiplier == pytest.approx(expected_sigma)
    assert meta.sample_rate == pytest.approx(TINY["batch_real"] * 10 / len(site))


@pytest.mark.parametrize("method", ["dp-dm", "dp-gm"])
def test_reported_epsilon_equals_independent_opacus_computation(site: LabeledImages, method: str) -> None:
    if method == "dp-gm":  # two classes keep the per-class double backward affordable
        site = site.subset(np.flatnonzero(site.labels.numpy() < 2))
    extra = {"outer_loop": 2, "inner_loop": 1, "iterations": 2, "sample_rate": 0.04} if method == "dp-gm" else {}
    cfg = CondenseConfig(method=method, ipc=1, epsilon=2.0, **{**TINY, **extra})
    meta = condense(site, cfg, progress=False).meta
    releases = cfg.iterations * (2 if method == "dp-gm" else 1)
    assert meta.dp_steps == releases
    reference = opacus_epsilon(meta.noise_multiplier, meta.sample_rate, releases, cfg.delta)
    assert meta.epsilon == pytest.approx(reference, rel=1e-9)
    assert meta.epsilon <= 2.0 and meta.delta == cfg.delta and meta.accountant == "rdp"


def test_dp_dos_releases_once_then_optimises_for_free(site: LabeledImages) -> None:
    """dp-dos charges only its releases (every record in each, q = 1), however many optimisation steps follow."""
    cfg = CondenseConfig(method="dp-dos", ipc=1, epsilon=2.0, dos_releases=3, **{**TINY, "iterations": 12})
    payload = condense(site, cfg, progress=False)
    meta = payload.meta
    assert (meta.dp_steps, meta.sample_rate, meta.iterations) == (3, 1.0, 12)
    assert meta.noise_multiplier == pytest.approx(calibrate_noise_multiplier(2.0, cfg.delta, 1.0, 3))
    assert meta.epsilon == pytest.approx(opacus_epsilon(meta.noise_multiplier, 1.0, 3, cfg.delta), rel=1e-9)
    assert meta.epsilon <= 2.0 and len(payload) == 10  # 100 records per class: every class is informative


def test_dp_dos_leaves_out_classes_whose_noisy_mean_is_mostly_noise(site: LabeledImages) -> None:
    labels = site.labels.numpy()
    keep = np.concatenate([np.flatnonzero(labels == 0), np.flatnonzero(labels == 1)[:2]])  # 100 and 2 records
    cfg = CondenseConfig(method="dp-dos", ipc=2, noise_multiplier=1.0, dos_releases=4, **TINY)
    payload = condense(site.subset(keep), cfg, progress=False)
    # noise norm on a class mean ~ 1.0 * sqrt(72) / m: 0.08 for m = 100 (kept), 4.2 for m = 2 (left out)
    assert payload.labels.tolist() == [0, 0]
    with pytest.raises(DataError, match="too few images for this epsilon"):  # nothing worth sending: named
        condense(site.subset(keep[100:]), cfg, progress=False)


def test_sequential_class_composition_charges_every_class(site: LabeledImages) -> None:
    base = {"method": "dp-dm", "ipc": 1, "noise_multiplier": 2.0, **TINY, "iterations": 2}
    parallel = condense(site, CondenseConfig(**base), progress=False).meta
    sequential = condense(site, CondenseConfig(**base, class_composition="sequential"), progress=False).meta
    assert sequential.dp_steps == 10 * parallel.dp_steps
    assert sequential.epsilon > parallel.epsilon
    assert parallel.epsilon == pytest.approx(opacus_epsilon(2.0, parallel.sample_rate, 2, 1e-5))


def test_per_sample_gradients_are_clipped(site: LabeledImages) -> None:
    from opacus import GradSampleModule

    from client.condense.base import matching_net, prepare_local

    local = prepare_local(site, torch.device("cpu"))
    cfg = CondenseConfig(method="dp-gm", epsilon=1.0, model_width=8)
    net = matching_net(local, cfg)
    for module in net.modules():
        if isinstance(module, torch.nn.ReLU):
            module.inplace = False
    weights = list(net.parameters())
    total = sum(w.numel() for w in weights)
    sampler = GradSampleModule(net, loss_reduction="sum")
    one = _clipped_sum(sampler, weights, local, torch.tensor([0]), None, None, clip=1e-3, total=total)
    many = _clipped_sum(sampler, weights, local, torch.arange(20), None, None, clip=1e-3, total=total)
    sampler.remove_hooks()
    assert float(one.norm()) == pytest.approx(1e-3, rel=1e-3)  # a real gradient is far larger than 1e-3
    assert float(many.norm()) <= 20 * 1e-3 + 1e-7


def test_real_refuses_differential_privacy() -> None:
    with pytest.raises(ConfigError, match="cannot be differentially private"):
        CondenseConfig(method="real", epsilon=1.0).validate()


@pytest.mark.parametrize("fields,match", [
    ({"method": "dm", "epsilon": 1.0}, "dp-dm"),
    ({"method": "dp-dm"}, "needs condense.epsilon"),
    ({"method": "dp-dm", "epsilon": 1.0, "init": "real"}, "init"),
    ({"method": "dp-gm", "epsilon": 1.0, "delta": 1.0}, "delta"),
    ({"method": "dp-dm", "epsilon": math.inf}, "epsilon"),
    ({"method": "dp-dm", "noise_multiplier": -1.0}, "noise_multiplier"),
    ({"method": "dp-dm", "epsilon": 1.0, "sample_rate": 1.5}, "sample_rate"),
])
def test_privacy_config_errors_name_the_field(fields: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        CondenseConfig(**fields).validate()
