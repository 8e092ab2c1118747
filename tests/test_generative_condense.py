"""The generative condensers (d2m, gendd, dp-d2m, dp-gendd) end to end on a few hundred real Fashion-MNIST
images, their time budget, and the DP variants' accounting against an independent Opacus computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from opacus.accountants import RDPAccountant

from client.condense import condense, get_condenser
from client.policy import planned_mechanism
from shared.config.condense import GENERATIVE_METHODS, CondenseConfig
from shared.data import LabeledImages
from shared.errors import ConfigError
from shared.generator_payload import GeneratorPayload
from shared.payload import PayloadSpec, validate_payload

TINY = {"ipc": 2, "iterations": 3, "gan_steps": 4, "pool_steps": 4, "pool_size": 2, "batch_real": 8,
        "batch_gen": 16, "batch_syn": 4, "model_width": 8, "latent_dim": 8, "generator_width": 8, "threads": 1}
SPEC = PayloadSpec(num_classes=10, image_shape=(1, 28, 28), max_ipc=10, require_secret_noise=True)


@pytest.fixture(scope="module")
def site(fmnist_train: LabeledImages) -> LabeledImages:
    """400 real images of classes 0-7 (the site holds no 8 or 9)."""
    index = np.flatnonzero(fmnist_train.labels.numpy() < 8)[:400]
    return fmnist_train.subset(index)


def config(method: str, **changes: object) -> CondenseConfig:
    # a fixed noise multiplier and a small sample rate keep Opacus' RDP computation quick
    dp = {"noise_multiplier": 1.0, "sample_rate": 0.05} if method.startswith("dp-") else {}
    return CondenseConfig(method=method, **{**TINY, **dp, **changes})


@pytest.mark.parametrize("method", GENERATIVE_METHODS)
def test_generative_condenser_sends_a_generator_for_the_held_classes(site: LabeledImages, method: str) -> None:
    payload = condense(site, config(method), progress=False)
    assert isinstance(payload, GeneratorPayload)
    assert payload.meta.generator == "cgan-dcgan" and payload.meta.generator_classes == list(range(8))
    assert payload.class_counts() == [2] * 8 + [0, 0] and payload.meta.iterations == 3
    released = payload.released()
    validate_payload(released, SPEC)
    assert torch.equal(released.images, payload.images)  # the server draws what the site previewed
    assert set(payload.to_arrays()) == {f"gen.{k}" for k in payload.weights}
    assert payload.wire_bytes() < 2**20
    if method.startswith("dp-"):
        sent = payload.wire_meta()
        assert payload.meta.noise_source == "os-entropy" and "seed" not in sent
        assert not {"local_class_counts", "sample_rate", "noise_multiplier"} & set(sent)
    else:
        assert payload.meta.epsilon is None and payload.meta.local_class_counts[8] == 0


def test_time_budget_stops_pretraining_and_refinement(site: LabeledImages) -> None:
    cfg = config("d2m", gan_steps=100_000, iterations=100_000, time_budget_s=2.0, gan_share=0.5)
    payload = condense(site, cfg, progress=False)
    assert payload.meta.wall_time_s < 60.0  # the budget, a one-off import and the BatchNorm re-estimation
    assert 0 < payload.extra["gan_steps"] < 100_000 and payload.meta.iterations < 100_000


@pytest.mark.parametrize("method", ["dp-d2m", "dp-gendd"])
def test_reported_epsilon_equals_independent_opacus_computation(site: LabeledImages, method: str) -> None:
    # dp-gendd calibrates the noise to epsilon 3 (the same code path for both); dp-d2m reports a fixed noise's
    calibrated = {"epsilon": 3.0, "noise_multiplier": 0.0} if method == "dp-gendd" else {}
    cfg = config(method, **calibrated)
    meta = condense(site, cfg, progress=False).meta
    steps = cfg.gan_steps + cfg.iterations  # one DP-SGD step per discriminator update, one release per refinement
    assert meta.dp_steps == steps
    accountant = RDPAccountant()
    for _ in range(steps):
        accountant.step(noise_multiplier=meta.noise_multiplier, sample_rate=meta.sample_rate)
    assert meta.epsilon == pytest.approx(accountant.get_epsilon(cfg.delta), rel=1e-9)
    assert meta.sample_rate == cfg.sample_rate
    assert meta.epsilon <= 3.0 if calibrated else meta.noise_multiplier == 1.0
    mechanism = planned_mechanism(site, cfg)  # what a site's policy checks before the run
    assert mechanism.steps == steps and mechanism.noise_multiplier == pytest.approx(meta.noise_multiplier)


def test_dp_discriminator_gradients_are_clipped_per_record(site: LabeledImages,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import client.condense.dp_generative as dp

    norms: list[float] = []
    original = dp.clip_rows

    def spy(values: torch.Tensor, clip: float) -> torch.Tensor:
        out = original(values, clip)
        norms.extend(out.reshape(len(out), -1).norm(dim=1).tolist())
        return out

    monkeypatch.setattr(dp, "clip_rows", spy)
    condense(site, config("dp-gendd", clip=0.25), progress=False)
    assert norms and max(norms) <= 0.25 + 1e-5


def test_policy_knows_the_dp_generative_methods() -> None:
    from shared.config.policy import DP_METHODS

    assert {"dp-d2m", "dp-gendd"} <= set(DP_METHODS)
    assert get_condenser("dp-d2m").planned_releases(config("dp-d2m")) == TINY["gan_steps"] + TINY["iterations"]


@pytest.mark.parametrize(("changes", "match"), [
    ({"generator": "biggan"}, "condense.generator"), ({"gan_share": 1.5}, "condense.gan_share"),
    ({"latent_dim": 0}, "condense.latent_dim"), ({"skd_weight": -1.0}, "condense.skd_weight"),
])
def test_bad_generative_settings_name_the_field(changes: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        config("gendd", **changes).validate()
