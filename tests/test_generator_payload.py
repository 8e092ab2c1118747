"""The generator payload (shared/generator_payload.py): wire and file round trips, the strict decode
(allow-list, options, weight names/shapes/dtype/finiteness, size, probe output) and the ServerApp taking
generator payloads from real ClientApps (in process) and in a real Flower simulation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from flwr.app import Array

from client import app as client_app
from server.flower import app as server_app
from server.flower.report import ACCEPTED, REJECTED, RunReport
from shared import wire
from shared.data import LabeledImages
from shared.errors import GeneratorPayloadError, PayloadError
from shared.generator_payload import GeneratorPayload, make_generator_payload
from shared.models.generators import build_generator
from shared.payload import CondensedPayload, PayloadMeta, PayloadSpec, validate_payload
from tests.test_flower_sim import NON_DP, LocalGrid, tiny_overrides, tiny_teacher

SPEC = PayloadSpec(num_classes=10, image_shape=(1, 28, 28), max_ipc=20, require_secret_noise=True)


def payload(classes: tuple[int, ...] = (0, 3, 7), ipc: int = 4, **options: int) -> GeneratorPayload:
    torch.manual_seed(0)
    module = build_generator("cgan-dcgan", 10, 1, 28, **({"latent_dim": 8, "width": 8} | options))
    meta = PayloadMeta(method="gendd", dataset="fashion_mnist", ipc=ipc, num_classes=10, channels=1, height=28,
                       width=28, mean=[0.286], std=[0.353], local_class_counts=[5 if c in classes else 0
                                                                                 for c in range(10)],
                       seed=0, iterations=1, generator_classes=list(classes))
    return make_generator_payload(module, meta, "cgan-dcgan")


def reply_content(p: CondensedPayload) -> Any:
    return wire.payload_to_content(p, {"num-samples": len(p)}, {"source": "test"})


def test_generator_payload_round_trips_through_a_file_and_the_wire(tmp_path: Path) -> None:
    p = payload()
    assert p.images.shape == (12, 1, 28, 28) and p.class_counts()[3] == 4
    assert 0.0 <= float(p.images.min()) and float(p.images.max()) <= 1.0
    loaded = CondensedPayload.load(p.save(tmp_path / "g.safetensors"))
    assert isinstance(loaded, GeneratorPayload) and torch.equal(loaded.images, p.images)
    assert json.loads(loaded.meta.generator_options) == {"latent_dim": 8, "width": 8}
    content = reply_content(p)
    assert set(content[wire.PAYLOAD]) == {f"gen.{k}" for k in p.weights}  # no image travels
    decoded = wire.payload_from_content(content, max_bytes=2**20, ipc=9)  # the server picks the IPC
    assert isinstance(decoded, GeneratorPayload) and decoded.meta.ipc == 9 and len(decoded) == 27
    validate_payload(decoded, SPEC)
    assert decoded.wire_bytes() == content_weight_bytes(content)


def content_weight_bytes(content: Any) -> int:
    return sum(int(a.numpy().nbytes) for a in content[wire.PAYLOAD].values())


def test_dp_generator_payload_leaves_its_private_fields_at_the_site() -> None:
    p = payload()
    p.meta.epsilon, p.meta.delta, p.meta.noise_source, p.meta.seed = 5.0, 1e-5, "os-entropy", None
    p.meta.noise_multiplier, p.meta.sample_rate, p.meta.dp_steps = 1.1, 0.01, 30
    sent = p.wire_meta()
    assert not {"local_class_counts", "noise_multiplier", "sample_rate"} & set(sent)
    validate_payload(p.released(), SPEC)


def _corrupt(p: GeneratorPayload, name: str, value: np.ndarray) -> Any:
    content = reply_content(p)
    content[wire.PAYLOAD][f"gen.{name}"] = Array(value)
    return content


@pytest.mark.parametrize("case", ["shape", "nan", "dtype", "missing", "foreign"])
def test_malformed_weights_are_rejected_with_a_named_error(case: str) -> None:
    p = payload()
    weight = p.weights["fc.weight"].numpy()
    if case == "shape":
        content = _corrupt(p, "fc.weight", np.zeros((3, 3), dtype=np.float32))
    elif case == "nan":
        content = _corrupt(p, "fc.weight", np.where(np.arange(weight.size).reshape(weight.shape) == 5, np.nan,
                                                    weight).astype(np.float32))
    elif case == "dtype":
        content = _corrupt(p, "fc.weight", weight.astype(np.float64))
    elif case == "missing":
        content = reply_content(p)
        del content[wire.PAYLOAD]["gen.fc.bias"]
    else:
        content = reply_content(p)
        content[wire.PAYLOAD]["images"] = Array(np.zeros((1, 1, 28, 28), dtype=np.uint8))
    match = {"shape": "fc.weight: shape", "nan": "NaN", "dtype": "float32", "missing": "missing",
             "foreign": "images"}[case]
    with pytest.raises(PayloadError, match=match) as info:
        wire.payload_from_content(content, max_bytes=2**20)
    assert case == "foreign" or isinstance(info.value, GeneratorPayloadError)


@pytest.mark.parametrize(("field", "value", "match"), [
    ("generator", "stylegan-xl", "not allowed"),
    ("generator_options", json.dumps({"latent_dim": 8, "width": 100_000}), "width=100000"),
    ("generator_options", json.dumps({"latent_dim": 8, "width": 8, "code": 1}), "'code' is unknown"),
    ("generator_options", "{not json", "not valid JSON"),
    ("generator_classes", [0, 0, 3], "distinct"),
    ("generator_classes", [0, 3, 12], "distinct class ids"),
])
def test_bad_generator_metadata_is_rejected_before_anything_runs(field: str, value: Any, match: str) -> None:
    p = payload()
    meta = p.wire_meta() | {field: value}
    with pytest.raises(GeneratorPayloadError, match=match):
        CondensedPayload.from_arrays(p.to_arrays(), meta)


def test_oversized_generator_payloads_are_rejected() -> None:
    p = payload(width=32, latent_dim=32)
    content = reply_content(p)
    with pytest.raises(PayloadError, match=r"exceeds federation\.max_payload_bytes"):
        wire.payload_from_content(content, max_bytes=100_000)
    with pytest.raises(PayloadError, match="exceeds the cap"):
        validate_payload(p.released(), PayloadSpec(num_classes=10, image_shape=(1, 28, 28), max_bytes=100_000))
    with pytest.raises(GeneratorPayloadError, match="images per class"):
        wire.payload_from_content(content, max_bytes=2**22, ipc=100_000)


def test_probe_output_outside_the_pixel_range_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    import shared.generator_payload as gp

    p = payload()
    real = gp.sample
    monkeypatch.setattr(gp, "sample", lambda m, y, g: real(m, y, g) + 1.0)  # a generator gone wrong
    with pytest.raises(GeneratorPayloadError, match=r"not within \[0, 1\]"):
        CondensedPayload.from_arrays(p.to_arrays(), p.wire_meta())


def test_wrong_geometry_for_the_teacher_is_rejected() -> None:
    p = payload()
    with pytest.raises(PayloadError, match="teacher expects"):
        validate_payload(p.released(), PayloadSpec(num_classes=10, image_shape=(3, 32, 32)))


# ---- the ServerApp ----------------------------------------------------------------------------------------
GENDD_TINY = {"condense.method": "gendd", "condense.gan-steps": 3, "condense.pool-steps": 2,
              "condense.pool-size": 1, "condense.batch-gen": 16, "condense.batch-syn": 2,
              "condense.latent-dim": 8, "condense.generator-width": 8, "condense.iterations": 2}


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory, fmnist_train: LabeledImages) -> Path:
    return tiny_teacher(tmp_path_factory.mktemp("teacher") / "resnet8", fmnist_train)


def small_site(folder: Path, train: LabeledImages, seed: int) -> dict[str, Any]:
    """A data site of 300 real images (train.npz): a simulated partition's loading would dominate the test."""
    index = np.random.default_rng(seed).choice(len(train), 300, replace=False)
    folder.mkdir(parents=True)
    pixels = train.images[torch.as_tensor(index)].numpy()[:, 0]
    np.savez(folder / "train.npz", images=pixels, labels=train.labels[index].numpy())
    return {"data-dir": str(folder), "policy-require-dp": False, "policy-audit": False}


def test_server_app_accepts_generator_payloads_and_rejects_a_corrupt_one(teacher: Path, tmp_path: Path,
                                                                         fmnist_train: LabeledImages) -> None:
    """The ServerApp's condense round (fan-out, judging, screening) with real ClientApps in process; the whole
    job with distillation runs in the Flower simulation test below."""
    from flwr.app import Context, Message
    from flwr.clientapp import ClientApp

    from shared.checkpoint import load_checkpoint

    real = client_app.build_app()
    corrupt = ClientApp()

    @corrupt.query("condense")
    def condense(msg: Message, context: Context) -> Message:
        reply = real(msg, context)
        record = reply.content[wire.PAYLOAD]
        record["gen.fc.weight"] = Array(np.full(record["gen.fc.weight"].numpy().shape, np.nan, dtype=np.float32))
        return reply

    shy = ClientApp()  # echoes IPC 1: the server draws the IPC it asked for (3) all the same

    @shy.query("condense")
    def condense_shy(msg: Message, context: Context) -> Message:
        reply = real(msg, context)
        reply.content[wire.PAYLOAD_META]["ipc"] = 1
        return reply

    overrides = tiny_overrides(teacher, tmp_path / "out") | NON_DP | GENDD_TINY | {"condense.ipc": 3}
    cfg = server_app.server_config({}, overrides)
    model, card = load_checkpoint(teacher)
    sites = {n: small_site(tmp_path / f"site{n}", fmnist_train, n) for n in (1, 2, 3, 4)}
    grid = LocalGrid({1: (real, sites[1]), 2: (real, sites[2]), 3: (corrupt, sites[3]), 4: (shy, sites[4])},
                     run_config={})
    collected = server_app.collect_payloads(grid, [1, 2, 3, 4], cfg, server_app.payload_spec(card, cfg),
                                            card.class_names)
    status = {o.node_id: o for o in collected.outcomes}
    assert [status[n].status for n in (1, 2, 3, 4)] == [ACCEPTED, ACCEPTED, REJECTED, ACCEPTED]
    assert "NaN" in status[3].reason and "gen.fc.weight" in status[3].reason
    assert all(status[n].method == "gendd" and status[n].ipc == 3 for n in (1, 2, 4))
    assert all(isinstance(p, GeneratorPayload) and len(p) == 3 * len(p.meta.generator_classes)
               for p in collected.payloads.values())
    total = sum(len(p) for p in collected.payloads.values())
    report = RunReport(command="pytest", config={})
    kept = server_app.screen(collected.payloads, model, card, cfg, report)  # the screening sees images
    assert report.screening["total_samples"] == total and 0 < report.screening["kept_samples"] <= total
    assert set(kept) <= {1, 2, 4}


@pytest.mark.slow
def test_generator_payloads_in_a_real_flower_simulation(teacher: Path, tmp_path: Path) -> None:
    from simulations.run import simulate
    from tests.test_flower_sim import simulation_config

    cfg = simulation_config(tiny_overrides(teacher, tmp_path / "out") | NON_DP | GENDD_TINY)
    saved = simulate(cfg, tmp_path / "out", command="pytest simulate", timeout=900)
    stream = (tmp_path / "out" / "flower" / "flwr-run.log").read_text()
    assert saved["status"] == "completed", f"{saved['error']}\n{stream[-3000:]}"
    assert saved["payloads_accepted"] == 3
    assert all(p["method"] == "gendd" and p["ipc"] == 2 and p["num_samples"] > 0 for p in saved["per_node"])
    assert saved["screening"]["total_samples"] == sum(p["num_samples"] for p in saved["per_node"])
