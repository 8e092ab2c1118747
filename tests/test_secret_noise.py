"""DP noise and Poisson sampling come from OS entropy, never from ``condense.seed`` (issue 11, deliverable 1).

The server knows (and in a federated run sets) ``condense.seed``; if the DP draws followed it, the server
could regenerate every noise vector and sampled index and subtract them. These tests check on actual
tensors that two DP runs with the same configuration and seed differ, that the only difference is the
secret generator, that non-DP runs stay reproducible, that DP payloads carry no seed, and that nothing the
server sends can select another source."""

from __future__ import annotations

import dataclasses
import json
import logging
import secrets
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Context, Message, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.supercore.task_identity import TaskIdentity

import client.condense.dm as dm_module
import client.condense.dp_dm as dp_dm_module
import client.condense.dp_gm as dp_gm_module
import client.condense.gm as gm_module
from client import app as client_app
from client.condense import condense
from client.condense.base import init_synthetic, prepare_local
from client.task import LocalData
from shared import wire
from shared.config.condense import CondenseConfig
from shared.data import LabeledImages, few_shot_indices
from shared.errors import CondexError, ConfigError, PayloadError
from shared.payload import META_KEY, SECRET_NOISE_SOURCE, CondensedPayload, PayloadSpec, validate_payload
from shared.privacy import NOISE_SOURCE, noisy_class_sums, poisson_mask, secret_generator

SEED = 3
DM = {"ipc": 2, "model_width": 8, "batch_real": 4, "iterations": 3}
GM = {"ipc": 1, "model_width": 8, "batch_real": 4, "iterations": 1, "outer_loop": 2, "inner_loop": 1}
SPEC = PayloadSpec(num_classes=10, image_shape=(1, 28, 28), max_ipc=10)
STRICT = dataclasses.replace(SPEC, require_secret_noise=True)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def site(fmnist_train: LabeledImages) -> LabeledImages:
    return fmnist_train.subset(few_shot_indices(fmnist_train.labels.numpy(), 40, seed=2))


@pytest.fixture(scope="module")
def two_class_site(site: LabeledImages) -> LabeledImages:
    """dp-gm runs a double backward per class: two classes keep it to a few seconds."""
    return site.subset(np.flatnonzero(site.labels.numpy() < 2))


def dp_config(method: str, **changes: object) -> CondenseConfig:
    sizes = GM if method == "dp-gm" else DM
    return CondenseConfig(**{"method": method, "noise_multiplier": 1.0, "seed": SEED, **sizes, **changes})


def data_for(method: str, site: LabeledImages, two_class_site: LabeledImages) -> LabeledImages:
    return two_class_site if method == "dp-gm" else site


class Recorder:
    """Wraps the DP modules' ``poisson_mask`` (and dp-dm's ``noisy_class_sums``) and keeps what they drew."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, module: object) -> None:
        self.masks: list[torch.Tensor] = []
        self.sums: list[torch.Tensor] = []
        self.generators: list[torch.Generator | None] = []
        mask, sums = module.poisson_mask, getattr(module, "noisy_class_sums", None)

        def record_mask(n: int, rate: float, generator: torch.Generator | None = None) -> torch.Tensor:
            self.generators.append(generator)
            self.masks.append(mask(n, rate, generator))
            return self.masks[-1]

        def record_sums(*args: object, **kwargs: object) -> torch.Tensor:
            self.sums.append(sums(*args, **kwargs))
            return self.sums[-1]

        monkeypatch.setattr(module, "poisson_mask", record_mask)
        if sums is not None:
            monkeypatch.setattr(module, "noisy_class_sums", record_sums)


# ---- the generator itself ------------------------------------------------------------------------------------
def test_secret_generators_are_independent_of_each_other_and_of_the_global_seed() -> None:
    torch.manual_seed(SEED)
    seeded = torch.rand(256)
    torch.manual_seed(SEED)
    first = torch.rand(256, generator=secret_generator())
    torch.manual_seed(SEED)
    second = torch.rand(256, generator=secret_generator())
    assert not torch.equal(first, second)
    assert not torch.equal(first, seeded) and not torch.equal(second, seeded)
    assert NOISE_SOURCE == SECRET_NOISE_SOURCE == "os-entropy"


def mt_words(generator: torch.Generator) -> np.ndarray:
    """The 624 MT19937 state words of a CPU generator (stored as uint64 after a 24-byte header)."""
    return np.frombuffer(generator.get_state()[24:24 + 8 * 624].numpy().tobytes(), dtype="<u8")


def test_secret_generator_state_is_not_reachable_by_any_seed() -> None:
    """torch keeps 32 bits of a seed, and a seeded MT19937 state obeys word[1] = f(word[0]); the secret state
    is 624 words of OS entropy instead, so it is none of the 2**32 seeded streams."""
    assert torch.equal(torch.rand(8, generator=torch.Generator().manual_seed(5)),
                       torch.rand(8, generator=torch.Generator().manual_seed(5 + 2**32)))  # why seeding is not enough

    def seeded_successor(word: int) -> int:
        return (1812433253 * (word ^ (word >> 30)) + 1) & 0xFFFFFFFF

    seeded = mt_words(torch.Generator().manual_seed(secrets.randbits(64)))
    assert int(seeded[1]) == seeded_successor(int(seeded[0]))  # the relation holds for every seed
    generator = secret_generator()
    words = mt_words(generator)
    assert int(words[1]) != seeded_successor(int(words[0]))
    assert int(words.max()) < 2**32 and len(np.unique(words)) > 600
    assert generator.initial_seed() == 0  # nothing about the state is reported


def test_mechanisms_without_a_generator_do_not_follow_the_global_seed() -> None:
    draws = []
    for _ in range(2):
        torch.manual_seed(SEED)
        draws.append((poisson_mask(2000, 0.5), noisy_class_sums(torch.zeros(4, 64), torch.tensor([0, 0, 1, 1]), 2,
                                                                clip=1.0, noise_multiplier=1.0)))
    (mask_a, sums_a), (mask_b, sums_b) = draws
    assert not torch.equal(mask_a, mask_b)
    assert not torch.equal(sums_a, sums_b)


# ---- DP runs: same configuration and seed, different draws -----------------------------------------------------
def test_two_dp_dm_runs_with_the_same_seed_draw_different_masks_noise_and_images(
        site: LabeledImages, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = dp_config("dp-dm")
    runs = []
    for _ in range(2):
        recorder = Recorder(monkeypatch, dp_dm_module)
        runs.append((condense(site, cfg, progress=False), recorder))
        monkeypatch.undo()
    (first, rec_a), (again, rec_b) = runs
    assert len(rec_a.masks) == len(rec_b.masks) == DM["iterations"] == first.meta.dp_steps
    assert all(not torch.equal(a, b) for a, b in zip(rec_a.masks, rec_b.masks, strict=True))
    assert all(not torch.equal(a, b) for a, b in zip(rec_a.sums, rec_b.sums, strict=True))
    assert not torch.equal(first.images, again.images)
    assert torch.equal(first.labels, again.labels)
    assert (first.meta.epsilon, first.meta.noise_multiplier) == (again.meta.epsilon, again.meta.noise_multiplier)


def test_two_dp_gm_runs_with_the_same_seed_draw_different_masks_and_images(
        site: LabeledImages, two_class_site: LabeledImages, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = dp_config("dp-gm")
    runs = []
    for _ in range(2):
        recorder = Recorder(monkeypatch, dp_gm_module)
        runs.append((condense(two_class_site, cfg, progress=False), recorder))
        monkeypatch.undo()
    (first, rec_a), (again, rec_b) = runs
    assert len(rec_a.masks) == len(rec_b.masks) == GM["outer_loop"] == first.meta.dp_steps
    assert all(not torch.equal(a, b) for a, b in zip(rec_a.masks, rec_b.masks, strict=True))
    assert not torch.equal(first.images, again.images)
    assert torch.equal(first.labels, again.labels)


@pytest.mark.parametrize("method,module", [("dp-dm", dp_dm_module), ("dp-gm", dp_gm_module)])
def test_the_secret_generator_is_the_only_source_of_run_to_run_differences(
        site: LabeledImages, two_class_site: LabeledImages, monkeypatch: pytest.MonkeyPatch, method: str,
        module: object) -> None:
    """Control: with the secret generator pinned, two runs are identical, so the tests above measure it and
    every other draw of a DP run still follows the seed. The masks are drawn from that generator."""
    data, cfg = data_for(method, site, two_class_site), dp_config(method)
    runs = []
    for _ in range(2):
        monkeypatch.setattr(module, "secret_generator", lambda device="cpu": torch.Generator().manual_seed(11))
        recorder = Recorder(monkeypatch, module)
        runs.append((condense(data, cfg, progress=False), recorder))
        monkeypatch.undo()
    (first, rec_a), (again, rec_b) = runs
    assert torch.equal(first.images, again.images)
    assert all(torch.equal(a, b) for a, b in zip(rec_a.masks, rec_b.masks, strict=True))
    assert all(g is not None for g in rec_a.generators)


@pytest.mark.parametrize("method", ["dp-dm", "dp-gm"])
def test_dp_runs_never_select_real_records_with_the_seeded_generator(
        site: LabeledImages, two_class_site: LabeledImages, monkeypatch: pytest.MonkeyPatch, method: str) -> None:
    def refuse(*args: object) -> torch.Tensor:
        raise AssertionError("sample_real (seeded selection of private records) called in a DP run")

    monkeypatch.setattr(dm_module, "sample_real", refuse)
    monkeypatch.setattr(gm_module, "sample_real", refuse)
    payload = condense(data_for(method, site, two_class_site), dp_config(method), progress=False)
    assert payload.meta.init == "noise"
    local = prepare_local(site, torch.device("cpu"))
    unvalidated = CondenseConfig(method=method, noise_multiplier=1.0, init="real")  # bypasses validate()
    with pytest.raises(ConfigError, match="real images"):
        init_synthetic(local, unvalidated, torch.Generator().manual_seed(SEED))


def test_non_dp_dm_with_the_same_seed_is_still_reproducible(site: LabeledImages) -> None:
    cfg = CondenseConfig(method="dm", seed=SEED, **DM)
    first, again = condense(site, cfg, progress=False), condense(site, cfg, progress=False)
    other = condense(site, CondenseConfig(method="dm", seed=SEED + 1, **DM), progress=False)
    assert torch.equal(first.images, again.images)
    assert not torch.equal(first.images, other.images)
    assert first.meta.seed == SEED and first.meta.noise_source is None
    validate_payload(first, SPEC)


# ---- what a DP payload says -------------------------------------------------------------------------------
def test_dp_payload_names_the_secret_source_and_carries_no_seed(site: LabeledImages, tmp_path: Path) -> None:
    payload = condense(site, dp_config("dp-dm"), progress=False)
    assert payload.meta.seed is None and payload.meta.noise_source == "os-entropy"
    wire_meta = payload.wire_meta()
    assert "seed" not in wire_meta and wire_meta["noise_source"] == "os-entropy"
    path = payload.save(tmp_path / "dp.safetensors")
    from safetensors import safe_open

    with safe_open(str(path), framework="np") as handle:
        header = json.loads(handle.metadata()[META_KEY])
    assert "seed" not in header and header["noise_source"] == "os-entropy"
    back = CondensedPayload.load(path)
    assert back.meta.seed is None and back.meta == payload.released().meta  # the file holds what a reply holds
    validate_payload(back, STRICT)


def test_validator_rejects_seed_derived_dp_noise_and_flags_old_dp_payloads(
        site: LabeledImages, caplog: pytest.LogCaptureFixture) -> None:
    payload = condense(site, dp_config("dp-dm"), progress=False)

    def with_meta(**changes: object) -> CondensedPayload:
        return dataclasses.replace(payload, meta=dataclasses.replace(payload.meta, **changes))

    with pytest.raises(PayloadError, match="noise_source='seed'"):
        validate_payload(with_meta(noise_source="seed"), SPEC)
    with pytest.raises(PayloadError, match=r"meta\.seed=0 in a DP payload"):
        validate_payload(with_meta(seed=0), SPEC)
    legacy = with_meta(noise_source=None, seed=0)  # what DP payloads looked like before noise_source
    with caplog.at_level(logging.WARNING, logger="condex.payload"):
        validate_payload(legacy, SPEC)
    assert "does not say where its noise came from" in caplog.text
    with pytest.raises(PayloadError, match="requires noise_source='os-entropy'"):
        validate_payload(legacy, STRICT)
    non_dp = condense(site, CondenseConfig(method="dm", **DM), progress=False)
    non_dp.meta.noise_source = "os-entropy"
    with pytest.raises(PayloadError, match="only meaningful for DP payloads"):
        validate_payload(non_dp, SPEC)


# ---- the ClientApp: nothing the server sends selects the source --------------------------------------------
def request(**changes: object) -> dict[str, object]:
    values = {"condense.method": "dp-dm", "condense.noise-multiplier": 1.0, "condense.seed": SEED,
              "condense.ipc": DM["ipc"], "condense.model-width": DM["model_width"],
              "condense.batch-real": DM["batch_real"], "condense.iterations": DM["iterations"],
              "condense.threads": 1}
    return {**values, **changes}


def context(run_config: dict[str, object] | None = None) -> Context:
    return Context(1, 1, {"partition-id": 0, "num-partitions": 1}, RecordDict(), dict(run_config or {}))


@pytest.mark.parametrize("key", ["condense.noise-source", "condense.secure-rng", "condense.secret-noise",
                                 "condense.noise-seed", "privacy.noise-source", "noise-source"])
def test_no_request_or_run_config_key_selects_the_noise_source(key: str) -> None:
    with pytest.raises(ConfigError, match="unknown config"):
        client_app.node_config(context(), request(**{key: "seed"}))
    with pytest.raises(ConfigError, match="unknown config"):
        client_app.node_config(context({key: "seed"}), request())


def test_a_seeded_request_through_the_client_app_still_gets_secret_noise(site: LabeledImages) -> None:
    """The ClientApp's path: run config + the server's request -> CondenseConfig -> condense -> reply."""
    local = LocalData(site, site.subset(range(10)), "unit")
    replies = []
    for _ in range(2):
        cfg = client_app.node_config(context({"condense.seed": 99}), request())
        assert cfg.condense.seed == SEED and cfg.condense.method == "dp-dm"
        replies.append(client_app.condense_content(local, cfg))
    assert all("seed" not in dict(reply[wire.PAYLOAD_META]) for reply in replies)
    first, again = (wire.payload_from_content(reply) for reply in replies)
    assert first.meta.seed is None and first.meta.noise_source == "os-entropy"
    assert not torch.equal(first.images, again.images)
    validate_payload(first, STRICT)


def test_a_condense_message_that_tries_to_pick_the_source_gets_a_config_error() -> None:
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, SUPERLINK_NODE_ID
    msg = Message(wire.request_to_content(request(**{"condense.noise-source": "seed"})), dst_node_id=1,
                  message_type="query.condense")
    reply = client_app.handle_condense(msg, context())
    assert reply.has_error() and reply.error.code == client_app.ERR_CONFIG
    assert "noise-source" in (reply.error.reason or "")


def test_the_client_never_sends_a_dp_payload_with_a_seed(site: LabeledImages) -> None:
    payload = condense(site, dp_config("dp-dm"), progress=False)
    client_app.check_secret_noise(payload, private=True)
    payload.meta.seed = SEED
    with pytest.raises(CondexError, match="refusing to send"):
        client_app.check_secret_noise(payload, private=True)
    payload.meta.seed, payload.meta.noise_source = None, None
    with pytest.raises(CondexError, match="refusing to send"):
        client_app.check_secret_noise(payload, private=True)
