"""What travels in Flower messages: condensed payloads, student weights and the server's requests.

A condense **reply** is a ``RecordDict`` with

* ``"payload"`` (ArrayRecord): ``images`` (uint8 or float16, N x C x H x W) and ``labels`` (int64 N), the
  arrays of ``CondensedPayload.to_arrays``; Flower serialises them with ``np.save`` and reads them with
  ``allow_pickle=False``, so a hostile node cannot smuggle objects in. A *generator payload* (``meta``
  names an allow-listed ``generator``: d2m, gendd, dp-*) carries instead one float32 array ``gen.<weight>``
  per weight of its conditional generator; decoding checks it and draws the prototypes
  (``shared.generator_payload``), at the IPC the server passes, so the server sees images either way;
* ``"payload-meta"`` (ConfigRecord): ``PayloadMeta.to_dict`` (method, IPC, shape, normalisation, privacy
  accounting, ...);
* ``"node-metrics"`` (MetricRecord): epsilon, condensation time, and, for non-DP payloads only, the local
  train/test counts (a DP reply leaves them out: they are not covered by its privacy budget);
* ``"node-info"`` (ConfigRecord): the node's description of its data source.

An **evaluate** request carries the student as ``"student"`` (ArrayRecord of its ``state_dict``) plus
``"student-card"`` (ConfigRecord with the model card JSON), so the node can rebuild the architecture.
A **condense** request carries ``"config"`` (ConfigRecord of ``section.kebab-key`` run-config entries
the server wants the node to use on top of the run config) and ``"expect"`` (ConfigRecord: ``num-classes``
of the teacher, its normalisation ``mean`` / ``std``, which sites holding their own images use instead
of statistics computed from them, and its ``class-names``, which sites map their folder names to).

Decoding never trusts the sender: sizes are checked before arrays are materialised and every problem
raises ``PayloadError`` naming the record or field."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from torch import nn

from shared.checkpoint import ModelCard, build_from_card, load_state_dict_checked
from shared.errors import CheckpointError, PayloadError
from shared.generator_payload import WEIGHT_PREFIX, GeneratorPayload
from shared.payload import CondensedPayload, PayloadMeta

PAYLOAD = "payload"
PAYLOAD_META = "payload-meta"
NODE_METRICS = "node-metrics"
NODE_INFO = "node-info"
STUDENT = "student"
STUDENT_CARD = "student-card"
REQUEST_CONFIG = "config"
REQUEST_EXPECT = "expect"
EVAL_METRICS = "eval-metrics"
PAYLOAD_ARRAYS = ("images", "labels")


# ---- condensed payloads --------------------------------------------------------------------------------
def payload_to_content(payload: CondensedPayload, metrics: Mapping[str, float] | None = None,
                       info: Mapping[str, str] | None = None) -> RecordDict:
    """Encode a payload (plus the node's metrics and data description) as a condense reply."""
    arrays = payload.to_arrays()
    record = ArrayRecord({name: Array(np.ascontiguousarray(value)) for name, value in arrays.items()})
    content = RecordDict({PAYLOAD: record, PAYLOAD_META: ConfigRecord(dict(payload.wire_meta()))})
    content[NODE_METRICS] = MetricRecord({k: float(v) for k, v in (metrics or {}).items() if v is not None})
    content[NODE_INFO] = ConfigRecord({k: str(v) for k, v in (info or {}).items()})
    return content


def content_bytes(content: RecordDict) -> int:
    """Bytes of array data in a reply (what ``federation.max_payload_bytes`` caps)."""
    return sum(record.count_bytes() for record in content.array_records.values())


def payload_from_content(content: RecordDict, max_bytes: int | None = None,
                         ipc: int | None = None) -> CondensedPayload:
    """Decode a condense reply; raise ``PayloadError`` naming the missing/oversized/mistyped part. A generator
    payload is checked and drawn from at ``ipc`` images per class (None: its ``meta.ipc``)."""
    if PAYLOAD not in content.array_records:
        raise PayloadError(f"reply has no ArrayRecord {PAYLOAD!r} (records: {', '.join(content) or 'none'})")
    if PAYLOAD_META not in content.config_records:
        raise PayloadError(f"reply has no ConfigRecord {PAYLOAD_META!r} with the payload metadata")
    record = content.array_records[PAYLOAD]
    size = record.count_bytes()
    if max_bytes is not None and size > max_bytes:
        raise PayloadError(f"{PAYLOAD}: {size} bytes exceeds federation.max_payload_bytes={max_bytes}")
    meta = PayloadMeta.from_dict(_plain_config(content.config_records[PAYLOAD_META]))
    if meta.generator is not None:
        return _generator_from_record(record, meta, max_bytes, ipc)
    unknown = sorted(set(record) - set(PAYLOAD_ARRAYS))
    if unknown:
        raise PayloadError(f"{PAYLOAD}: unexpected array(s) {', '.join(unknown)}; expected images and labels")
    arrays = {name: _to_numpy(record, name, max_bytes) for name in PAYLOAD_ARRAYS if name in record}
    return CondensedPayload.from_arrays(arrays, meta)


def _generator_from_record(record: ArrayRecord, meta: PayloadMeta, max_bytes: int | None,
                           ipc: int | None) -> GeneratorPayload:
    """A generator payload: only ``gen.*`` arrays, each a plain .npy within the cap; then the strict decode."""
    foreign = sorted(name for name in record if not name.startswith(WEIGHT_PREFIX))
    if foreign:
        raise PayloadError(f"{PAYLOAD}: array(s) {', '.join(foreign[:5])} in a generator payload (meta.generator="
                           f"{meta.generator!r}); it carries only {WEIGHT_PREFIX}<weight> arrays")
    arrays = {name: _to_numpy(record, name, max_bytes) for name in record}
    return GeneratorPayload.from_arrays(arrays, meta, ipc=ipc)


def _to_numpy(record: ArrayRecord, name: str, max_bytes: int | None = None) -> np.ndarray:
    array = record[name]
    if not isinstance(array.data, bytes) or array.stype != "numpy.ndarray":
        raise PayloadError(f"{PAYLOAD}.{name}: serialisation {array.stype!r} is not numpy.ndarray")
    check_npy_header(array.data, f"{PAYLOAD}.{name}", max_bytes)
    try:
        return array.numpy()
    except (TypeError, ValueError, OSError, EOFError) as exc:  # non-numpy stype, pickled objects, corrupt bytes
        raise PayloadError(f"{PAYLOAD}.{name}: cannot be decoded as a numpy array ({exc})") from None


def check_npy_header(data: bytes, field: str, max_bytes: int | None = None) -> tuple[int, ...]:
    """Read only the ``.npy`` header of ``data`` and check, before anything is allocated, that the array it
    declares is plain (no objects), fits ``max_bytes`` and is exactly as long as the bytes that follow: a
    100-byte header claiming 10^15 elements is refused here instead of inside ``np.load``."""
    import io

    from numpy.lib import format as npy

    handle = io.BytesIO(data)
    try:
        version = npy.read_magic(handle)
        read = {(1, 0): npy.read_array_header_1_0, (2, 0): npy.read_array_header_2_0}.get(version)
        if read is None:
            raise ValueError(f"npy format version {version} is not accepted (np.save writes 1.0)")
        shape, _, dtype = read(handle)
    except (ValueError, EOFError, TypeError, SyntaxError) as exc:
        raise PayloadError(f"{field}: not a readable .npy array ({exc}); the site must send np.save bytes") from None
    if dtype.hasobject or dtype.itemsize == 0:
        raise PayloadError(f"{field}: dtype {dtype} is not a plain numeric dtype")
    declared = math.prod(shape) * dtype.itemsize  # Python ints: no overflow, no allocation
    if max_bytes is not None and declared > max_bytes:
        raise PayloadError(f"{field}: header declares shape {shape} ({declared} bytes), above "
                           f"federation.max_payload_bytes={max_bytes}")
    present = len(data) - handle.tell()
    if declared != present:
        raise PayloadError(f"{field}: header declares shape {shape} of {dtype} ({declared} bytes) but {present} "
                           "bytes follow; the array is truncated or padded")
    return tuple(shape)


def _plain_config(record: ConfigRecord) -> dict[str, Any]:
    return {key: list(value) if isinstance(value, list) else value for key, value in record.items()}


def node_metrics(content: RecordDict) -> dict[str, float]:
    record = content.metric_records.get(NODE_METRICS)
    return {k: v for k, v in record.items() if isinstance(v, int | float)} if record else {}


# Metrics the server reads from a reply: name -> (must be an integer, lowest, highest); anything else a node
# sends is ignored. A known metric that is NaN, infinite, a list or out of range rejects the node's reply.
NODE_METRIC_RANGES: dict[str, tuple[bool, float, float]] = {
    "condense-seconds": (False, 0.0, math.inf), "condense-finished": (False, 0.0, math.inf),
    "num-samples": (True, 0, math.inf), "epsilon": (False, 0.0, math.inf), "delta": (False, 0.0, 1.0),
    "local-train": (True, 0, math.inf), "local-test": (True, 0, math.inf),
    # a site's own audit of its payload (sent when its policy sets an audit threshold; shared/privacy/audit)
    "audit-mia-auc": (False, 0.0, 1.0), "audit-mia-tpr-1pct-fpr": (False, 0.0, 1.0),
    "audit-memorization-ratio": (False, 0.0, math.inf), "audit-memorization-share": (False, 0.0, 1.0),
}
EVAL_METRIC_RANGES: dict[str, tuple[bool, float, float]] = {
    "accuracy": (False, 0.0, 1.0), "num-examples": (True, 0, math.inf),
}


def checked_metrics(content: RecordDict, record_name: str, ranges: Mapping[str, tuple[bool, float, float]],
                    required: Sequence[str] = ()) -> dict[str, float]:
    """The known metrics of ``content[record_name]``, each a finite number in its range; ``PayloadError``
    naming the record and metric otherwise (so a hostile value never reaches a mean or an ``int()``)."""
    record = content.metric_records.get(record_name)
    values = dict(record.items()) if record else {}
    missing = [name for name in required if name not in values]
    if missing:
        raise PayloadError(f"{record_name}: missing metric(s) {', '.join(missing)}")
    out: dict[str, float] = {}
    for name, (integer, low, high) in ranges.items():
        if name not in values:
            continue
        value = values[name]
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise PayloadError(f"{record_name}.{name}={value!r} must be a finite number")
        if integer and not float(value).is_integer():
            raise PayloadError(f"{record_name}.{name}={value!r} must be a whole number")
        if not low <= value <= high:
            raise PayloadError(f"{record_name}.{name}={value!r} must be in [{low}, {high}]")
        out[name] = int(value) if integer else float(value)
    return out


def node_info(content: RecordDict) -> dict[str, str]:
    record = content.config_records.get(NODE_INFO)
    return {k: str(v) for k, v in record.items()} if record else {}


# ---- student weights -----------------------------------------------------------------------------------
def student_to_content(model: nn.Module, card: ModelCard) -> RecordDict:
    """The student's weights (state_dict) and card, for federated evaluation at the nodes."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return RecordDict({STUDENT: ArrayRecord(state), STUDENT_CARD: ConfigRecord({"card-json": card.to_json()})})


def student_from_content(content: RecordDict) -> tuple[nn.Module, ModelCard]:
    """Rebuild the student on CPU in eval mode; ``CheckpointError`` if the card and weights do not fit."""
    if STUDENT not in content.array_records or STUDENT_CARD not in content.config_records:
        raise CheckpointError(f"evaluate request needs records {STUDENT!r} and {STUDENT_CARD!r}")
    try:
        values = json.loads(str(content.config_records[STUDENT_CARD]["card-json"]))
    except (KeyError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{STUDENT_CARD}: no readable card-json ({exc})") from None
    card = ModelCard.from_dict(values, source=STUDENT_CARD)
    model = build_from_card(card)
    state = {k: torch.from_numpy(np.array(a.numpy(), copy=True)) for k, a in content.array_records[STUDENT].items()}
    load_state_dict_checked(model, state, source=STUDENT, arch=card.arch)
    return model.eval(), card


# ---- requests ------------------------------------------------------------------------------------------
def request_to_content(values: Mapping[str, bool | int | float | str], num_classes: int | None = None,
                       mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                       class_names: Sequence[str] = ()) -> RecordDict:
    """A condense request: run-config style overrides (``condense.ipc`` ...) the node applies, the number of
    classes the server's teacher knows (a site folder may hold only some of them) and the teacher's
    normalisation (``mean``/``std`` per channel), which a site normalises its own images with, and its
    ``class-names``, which a site maps its folder names to (so labels are the teacher's class ids)."""
    content = RecordDict({REQUEST_CONFIG: ConfigRecord(dict(values))})
    expect: dict[str, int | list[float] | list[str]] = {}
    if class_names:
        expect["class-names"] = [str(n) for n in class_names]
    if num_classes is not None:
        expect["num-classes"] = int(num_classes)
    if mean is not None and std is not None:
        expect["mean"], expect["std"] = [float(m) for m in mean], [float(s) for s in std]
    if expect:
        content[REQUEST_EXPECT] = ConfigRecord(expect)
    return content


def expected_classes(content: RecordDict) -> int | None:
    record = content.config_records.get(REQUEST_EXPECT)
    value = record.get("num-classes") if record else None
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else None


def expected_class_names(content: RecordDict) -> tuple[str, ...]:
    """The teacher's class names from the query (empty if the server sent none); ``PayloadError`` if malformed."""
    record = content.config_records.get(REQUEST_EXPECT)
    names = record.get("class-names") if record else None
    if names is None:
        return ()
    if not (isinstance(names, list) and all(isinstance(n, str) and n for n in names)):
        raise PayloadError(f"{REQUEST_EXPECT}: class-names={names!r} must be a list of non-empty strings")
    return tuple(names)


def expected_stats(content: RecordDict) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """The normalisation (mean, std) the server asked for, or None if its query has none; ``PayloadError``
    if it is malformed (lengths differ, not finite, std <= 0)."""
    record = content.config_records.get(REQUEST_EXPECT)
    if not record or "mean" not in record or "std" not in record:
        return None
    mean, std = record["mean"], record["std"]
    if not (isinstance(mean, list) and isinstance(std, list) and len(mean) == len(std) > 0
            and all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in mean + std)
            and all(v > 0 for v in std)):
        raise PayloadError(f"{REQUEST_EXPECT}: mean={mean!r} / std={std!r} must be equally long lists of finite "
                           "numbers, std > 0")
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def request_from_content(content: RecordDict) -> dict[str, Any]:
    record = content.config_records.get(REQUEST_CONFIG)
    return _plain_config(record) if record else {}
