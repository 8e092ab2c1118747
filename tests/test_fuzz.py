"""Property-based fuzzing (issue 13.6) of what condex reads from outside: payload files, Flower replies,
checkpoints, site folders and config values. Each property: the input is accepted, or refused with the
named ``CondexError`` subclass; never another exception, never NaN carried on, never a half-written file.

Example counts are bounded so the whole file runs in well under 30 s on a busy 2-core CPU."""

from __future__ import annotations

import copy
import io
import json
import math
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from flwr.app import Array, ConfigRecord, Message, MetricRecord
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.supercore.task_identity import TaskIdentity
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from server.flower import app as server_app
from server.flower.report import ACCEPTED, REJECTED
from server.run import RunDir
from shared import wire
from shared.checkpoint import CARD_FILE, ModelCard, load_checkpoint, save_checkpoint
from shared.config import CondexConfig, apply_overrides, to_flat
from shared.config.checks import check_types
from shared.data.sources import load_folder
from shared.errors import CheckpointError, ConfigError, DataError, PayloadError
from shared.models import build_model
from shared.payload import CondensedPayload, PayloadMeta, PayloadSpec, validate_payload

FAST = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                       HealthCheck.function_scoped_fixture])
SPEC = PayloadSpec(num_classes=10, image_shape=(1, 8, 8), max_ipc=3)
BYTE_CAP = 2**20


def _payload(per_class: list[int], seed: int = 0, wire_dtype: str = "uint8") -> CondensedPayload:
    labels = torch.tensor([c for c, n in enumerate(per_class) for _ in range(n)], dtype=torch.int64)
    images = torch.rand(len(labels), 1, 8, 8, generator=torch.Generator().manual_seed(seed))
    meta = PayloadMeta("dm", "fashion_mnist", 3, 10, 1, 8, 8, [0.3], [0.35], local_class_counts=[5] * 10, seed=seed,
                       wire_dtype=wire_dtype)
    return CondensedPayload(images, labels, meta)


per_class = st.lists(st.integers(0, 3), min_size=10, max_size=10).filter(lambda counts: sum(counts) > 0)
hostile_floats = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([math.nan, math.inf, -math.inf])
hostile_scalars = (hostile_floats | st.integers(-(2**70), 2**70) | st.booleans() | st.text(max_size=8)
                   | st.none() | st.lists(st.floats(allow_nan=True), max_size=3))


def _no_temp_files(directory: Path) -> bool:
    return not [p for p in directory.rglob(".*") if p.name != ".DS_Store"]


# ---- payload files --------------------------------------------------------------------------------------
@FAST
@given(per_class, st.integers(0, 1000), st.sampled_from(["uint8", "float16"]))
def test_valid_payload_files_round_trip_and_pass(counts: list[int], seed: int, wire_dtype: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = _payload(counts, seed, wire_dtype).save(Path(tmp) / "p.safetensors")
        loaded = CondensedPayload.load(path)
        validate_payload(loaded, SPEC)
        assert loaded.class_counts() == counts and _no_temp_files(Path(tmp))


@FAST
@given(per_class, st.data())
def test_damaged_payload_files_are_refused_by_name(counts: list[int], data: st.DataObject) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = _payload(counts).save(Path(tmp) / "p.safetensors")
        raw = bytearray(path.read_bytes())
        kind = data.draw(st.sampled_from(["flip", "truncate", "header"]))
        if kind == "flip":
            for index in data.draw(st.lists(st.integers(0, len(raw) - 1), min_size=1, max_size=20)):
                raw[index] = data.draw(st.integers(0, 255))
        elif kind == "truncate":
            raw = raw[: data.draw(st.integers(0, len(raw) - 1))]
        else:  # rewrite the metadata JSON with a hostile value for one key
            header_len = int.from_bytes(raw[:8], "little")
            header = json.loads(raw[8:8 + header_len])
            meta = json.loads(header["__metadata__"]["condex_meta"])
            meta[data.draw(st.sampled_from([*sorted(meta), "extra"]))] = data.draw(hostile_scalars)
            header["__metadata__"]["condex_meta"] = json.dumps(meta)
            blob = json.dumps(header).encode()
            blob += b" " * (-len(blob) % 8)
            raw = bytearray(len(blob).to_bytes(8, "little")) + blob + raw[8 + header_len:]
        path.write_bytes(bytes(raw))
        try:
            validate_payload(CondensedPayload.load(path), SPEC)
        except PayloadError:
            pass  # named refusal; acceptance is fine too (a flipped pixel byte is still a valid image)


# ---- Flower replies -------------------------------------------------------------------------------------
def _reply(content: Any) -> Message:
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, SUPERLINK_NODE_ID
    return Message(content, dst_node_id=SUPERLINK_NODE_ID, message_type="query.condense", group_id="condense")


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


@st.composite
def hostile_array(draw: st.DrawFn) -> Array:
    kind = draw(st.sampled_from(["shape", "dtype", "bytes", "header"]))
    if kind == "shape":
        shape = tuple(draw(st.lists(st.integers(0, 9), max_size=5)))
        return Array(np.zeros(shape, dtype=draw(st.sampled_from([np.uint8, np.int64, np.float16]))))
    if kind == "dtype":
        dtype = draw(st.sampled_from([np.float64, np.int32, np.bool_, np.complex64, np.uint16, "S3", "U2"]))
        return Array(np.zeros((3, 1, 8, 8), dtype=dtype))
    if kind == "bytes":
        data = draw(st.binary(max_size=300))
        return Array(dtype="uint8", shape=(1,), stype="numpy.ndarray", data=data)
    shape = tuple(draw(st.lists(st.integers(0, 10**12), min_size=1, max_size=4)))
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": draw(st.sampled_from(["<f8", "|u1", "<i8", "|O"])),
                                                  "fortran_order": draw(st.booleans()), "shape": shape})
    return Array(dtype="uint8", shape=shape, stype="numpy.ndarray",
                 data=header.getvalue() + draw(st.binary(max_size=64)))


@FAST
@given(per_class, st.data())
def test_any_damaged_reply_rejects_its_node_with_a_named_reason(counts: list[int], data: st.DataObject) -> None:
    content = wire.payload_to_content(_payload(counts), {"local-train": 50, "condense-seconds": 1.0}, {"source": "x"})
    for _ in range(data.draw(st.integers(1, 3))):
        target = data.draw(st.sampled_from(["metric", "array", "meta"]))
        if target == "metric":
            name = data.draw(st.sampled_from([*wire.NODE_METRIC_RANGES, "other"]))
            value = data.draw(hostile_floats | st.integers(-(2**62), 2**62) | st.lists(st.floats(), max_size=3))
            content[wire.NODE_METRICS] = MetricRecord({**dict(content[wire.NODE_METRICS]), name: value})
        elif target == "array":
            content[wire.PAYLOAD][data.draw(st.sampled_from(["images", "labels"]))] = data.draw(hostile_array())
        else:
            meta = dict(content[wire.PAYLOAD_META])
            value = data.draw(st.integers(-(2**62), 2**62) | hostile_floats | st.text(max_size=5) | st.booleans()
                              | st.lists(st.floats(allow_nan=True), max_size=3))
            meta[data.draw(st.sampled_from(sorted(meta)))] = value
            try:
                content[wire.PAYLOAD_META] = ConfigRecord(meta)
            except (TypeError, ValueError):
                assume(False)  # Flower itself refuses to build such a record: no node can send it
    outcome, payload = server_app.judge_reply(5, _reply(content), SPEC, BYTE_CAP)
    assert outcome.status in (ACCEPTED, REJECTED)
    if outcome.status == REJECTED:
        assert payload is None and outcome.reason.startswith("PayloadError: "), outcome.reason
    else:
        validate_payload(payload, SPEC)
        assert all(isinstance(v, int | float) and math.isfinite(v) for v in
                   (outcome.condense_seconds or 0.0, outcome.local_train or 0, outcome.local_test or 0))


@FAST
@given(st.dictionaries(st.sampled_from(["accuracy", "num-examples", "other"]), hostile_floats
                       | st.integers(-(2**62), 2**62) | st.lists(st.floats(), max_size=2), max_size=3))
def test_any_evaluation_reply_gives_a_fraction_or_a_reason(metrics: dict[str, Any]) -> None:
    from server.flower.report import NodeOutcome

    outcome = NodeOutcome(1, ACCEPTED)
    server_app.judge_eval_reply(_reply(wire.RecordDict({wire.EVAL_METRICS: MetricRecord(metrics)})), outcome)
    if outcome.eval_accuracy is None:
        assert outcome.eval_error.startswith("rejected evaluation reply: "), outcome.eval_error
    else:
        assert 0.0 <= outcome.eval_accuracy <= 1.0


# ---- checkpoints ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    card = ModelCard(arch="lenet5_half", dataset="fashion_mnist", num_classes=10, in_channels=1, image_size=28,
                     mean=[0.286], std=[0.353])
    model = build_model("lenet5_half", num_classes=10, in_channels=1, image_size=28)
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "student", model, card)


@FAST
@given(st.sampled_from(["num_classes", "in_channels", "image_size", "mean", "std", "version", "arch", "role",
                        "format", "class_names", "test_accuracy", "arch_kwargs", "extra"]), hostile_scalars)
def test_any_card_value_is_accepted_or_named(small_checkpoint: Path, key: str, value: Any) -> None:
    values = json.loads((small_checkpoint / CARD_FILE).read_text()) | {key: value}
    try:
        card = ModelCard.from_dict(copy.deepcopy(values))
    except CheckpointError:
        return
    assert all(math.isfinite(v) for v in card.mean + card.std) and all(s > 0 for s in card.std)


@FAST
@given(st.data())
def test_damaged_weights_and_state_files_are_named(small_checkpoint: Path, data: st.DataObject) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp) / "ckpt"
        directory.mkdir()
        for file in small_checkpoint.iterdir():
            (directory / file.name).write_bytes(file.read_bytes())
        weights = directory / "model.safetensors"
        raw = bytearray(weights.read_bytes())
        if data.draw(st.booleans()):
            raw = raw[: data.draw(st.integers(0, len(raw) - 1))]
        else:
            for index in data.draw(st.lists(st.integers(0, len(raw) - 1), min_size=1, max_size=30)):
                raw[index] = data.draw(st.integers(0, 255))
        weights.write_bytes(bytes(raw))
        try:
            model, _ = load_checkpoint(directory)
        except CheckpointError:
            pass
        else:  # accepted weights are finite ones
            assert all(bool(torch.isfinite(t).all()) for t in model.state_dict().values() if t.is_floating_point())
        run = RunDir(Path(tmp) / "run")
        run.state_file.write_bytes(data.draw(st.binary(max_size=400)))
        with pytest.raises(CheckpointError):
            run.load_state()


# ---- site folders ---------------------------------------------------------------------------------------
@FAST
@given(st.sampled_from([np.uint8, np.float32, np.int64, np.bool_]),
       st.lists(st.integers(0, 5), min_size=1, max_size=4),
       st.lists(st.integers(-(2**40), 2**40), max_size=6) | st.lists(st.floats(allow_nan=True), max_size=6))
def test_any_npz_site_is_loaded_or_named(image_dtype: Any, shape: list[int], labels: list[Any]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        np.savez(Path(tmp) / "train.npz", images=np.zeros(shape, dtype=image_dtype), labels=np.array(labels))
        try:
            data = load_folder(Path(tmp), "train")
        except DataError:
            return
        assert len(data) == len(labels) and data.info.num_classes <= 100_000
        assert data.class_counts() is not None


@FAST
@given(st.lists(st.binary(max_size=120), min_size=1, max_size=3), st.booleans())
def test_any_file_in_a_class_folder_is_an_image_or_named(blobs: list[bytes], with_good: bool) -> None:
    from PIL import Image

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "train" / "0"
        folder.mkdir(parents=True)
        if with_good:
            Image.fromarray(np.zeros((8, 8), np.uint8)).save(folder / "good.png")
        for i, blob in enumerate(blobs):
            (folder / f"f{i}.png").write_bytes(blob)
        try:
            load_folder(Path(tmp), "train")
        except DataError:
            pass


# ---- config values --------------------------------------------------------------------------------------
FLAT_KEYS = sorted(to_flat(CondexConfig()))


@FAST
@given(st.sampled_from(FLAT_KEYS), hostile_scalars | st.sampled_from(["nan", "inf", "-inf", "true", "1e400", ""]))
def test_any_config_value_is_accepted_or_named(key: str, value: Any) -> None:
    cfg = CondexConfig()
    try:
        apply_overrides(cfg, {key: value}).validate()
    except ConfigError as exc:
        assert key.split(".")[0] in str(exc) or key.replace("-", "_").split(".")[-1] in str(exc), (key, str(exc))
        return
    for section in ("data", "teacher", "condense", "distill", "federation"):  # nothing NaN or mistyped got in
        check_types(getattr(cfg, section), section)


# ---- nothing half-written -------------------------------------------------------------------------------
@FAST
@given(st.text(max_size=6))
def test_a_refused_save_leaves_no_file(wire_dtype: str) -> None:
    assume(wire_dtype not in ("uint8", "float16"))
    with tempfile.TemporaryDirectory() as tmp:
        with pytest.raises(PayloadError):
            _payload([1] * 10, wire_dtype=wire_dtype).save(Path(tmp) / "p.safetensors")
        assert list(Path(tmp).iterdir()) == []
        card = ModelCard(arch="lenet5_half", dataset="fashion_mnist", num_classes=10, in_channels=1, image_size=28,
                         mean=[0.3], std=[-1.0], format=wire_dtype or "x")
        with pytest.raises(CheckpointError):
            save_checkpoint(Path(tmp) / "ckpt", build_model("lenet5_half", 10, 1, 28), card)
        assert list(Path(tmp).iterdir()) == []
