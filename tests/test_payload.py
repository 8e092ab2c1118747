"""The condensed payload: wire round trips, file round trips, metadata and the strict validator."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.errors import PayloadError
from shared.payload import DP_PRIVATE_FIELDS, CondensedPayload, PayloadMeta, PayloadSpec, validate_payload

SPEC = PayloadSpec(num_classes=10, image_shape=(1, 28, 28), max_ipc=10)


def make_payload(per_class: list[int], ipc: int = 10, seed: int = 0, wire_dtype: str = "uint8",
                 epsilon: float | None = None) -> CondensedPayload:
    generator = torch.Generator().manual_seed(seed)
    labels = torch.repeat_interleave(torch.arange(len(per_class)), torch.tensor(per_class))
    images = torch.rand((len(labels), 1, 28, 28), generator=generator)
    local = [max(n, 1) * 60 if n else 0 for n in per_class]
    meta = PayloadMeta(method="dp-dm" if epsilon else "dm", dataset="fashion_mnist", ipc=ipc, num_classes=10,
                       channels=1, height=28, width=28, mean=[0.286], std=[0.353], local_class_counts=local,
                       seed=seed, iterations=5, wall_time_s=1.5, wire_dtype=wire_dtype, init="real",
                       epsilon=epsilon, delta=1e-5 if epsilon else None)
    return CondensedPayload(images, labels, meta)


def replace(payload: CondensedPayload, **changes: object) -> CondensedPayload:
    return dataclasses.replace(payload, **changes)


def with_meta(payload: CondensedPayload, **changes: object) -> CondensedPayload:
    return replace(payload, meta=dataclasses.replace(payload.meta, **changes))


@pytest.mark.parametrize("wire_dtype,tolerance", [("uint8", 0.5 / 255 + 1e-7), ("float16", 5e-4)])
def test_wire_round_trip(wire_dtype: str, tolerance: float) -> None:
    payload = make_payload([3] * 10, wire_dtype=wire_dtype)
    arrays = payload.to_arrays()
    assert arrays["images"].dtype == np.dtype(wire_dtype) and arrays["labels"].dtype == np.int64
    meta = payload.wire_meta()
    json.dumps(meta)  # JSON-safe
    assert all(v is not None for v in meta.values())
    back = CondensedPayload.from_arrays(arrays, meta)
    assert back.images.dtype == torch.float32
    assert float((back.images - payload.images).abs().max()) <= tolerance
    assert torch.equal(back.labels, payload.labels) and back.meta == payload.meta
    validate_payload(back, SPEC)


def test_file_round_trip_keeps_the_public_dp_metadata(tmp_path: Path) -> None:
    payload = make_payload([2, 0, 1, 2, 2, 2, 0, 2, 2, 2], epsilon=3.5, wire_dtype="float16")
    payload.meta.noise_multiplier, payload.meta.sample_rate, payload.meta.dp_steps = 1.25, 0.02, 400
    path = payload.save(tmp_path / "site" / "payload.safetensors")
    back = CondensedPayload.load(path)
    # what stays at the site: class counts, sample rate, noise multiplier (DP_PRIVATE_FIELDS)
    public = dataclasses.replace(payload.meta, local_class_counts=None, sample_rate=None, noise_multiplier=None)
    assert back.meta == public and back.meta.dp_steps == 400 and back.meta.epsilon == 3.5
    assert back.meta == payload.released().meta and torch.equal(back.labels, payload.labels)
    assert torch.allclose(back.images, payload.images, atol=5e-4)
    assert not list(path.parent.glob(".*"))  # atomic write left no temporary file


def test_dp_payloads_leave_without_class_counts_and_sampling_parameters(caplog: pytest.LogCaptureFixture) -> None:
    dp = make_payload([2] * 10, epsilon=3.0)
    dp.meta.noise_multiplier, dp.meta.sample_rate, dp.meta.dp_steps = 1.1, 0.05, 20
    dp.meta.seed, dp.meta.noise_source = None, "os-entropy"
    sent = dp.wire_meta()
    assert not set(DP_PRIVATE_FIELDS) & set(sent) and sent["epsilon"] == 3.0 and sent["dp_steps"] == 20
    strict = dataclasses.replace(SPEC, require_secret_noise=True)
    validate_payload(dp.released(), strict)  # counts are optional; only the label <= ipc check remains
    with caplog.at_level("WARNING", logger="condex.payload"):
        validate_payload(dp, SPEC)  # an older writer's DP payload that still carries them: accepted, flagged
    assert "local_class_counts" in caplog.text and "sample_rate" in caplog.text
    with pytest.raises(PayloadError, match=r"meta\.local_class_counts, meta\.sample_rate, meta\.noise_multiplier"):
        validate_payload(dp, strict)
    non_dp = make_payload([2] * 10)  # a non-DP payload keeps its counts (documented as revealed)
    assert non_dp.wire_meta()["local_class_counts"] == non_dp.meta.local_class_counts


def test_load_rejects_foreign_files(tmp_path: Path) -> None:
    bogus = tmp_path / "x.safetensors"
    bogus.write_bytes(b"not a safetensors file")
    with pytest.raises(PayloadError, match="not a readable"):
        CondensedPayload.load(bogus)
    with pytest.raises(PayloadError, match="does not exist"):
        CondensedPayload.load(tmp_path / "missing.safetensors")


def test_normalized_uses_the_metadata_statistics() -> None:
    payload = make_payload([1] * 10)
    assert torch.allclose(payload.normalized(), (payload.images - 0.286) / 0.353)


def test_from_arrays_rejects_a_wire_dtype_mismatch() -> None:
    payload = make_payload([1] * 10)
    arrays = payload.to_arrays("float16")
    with pytest.raises(PayloadError, match="wire dtype"):
        CondensedPayload.from_arrays(arrays, payload.wire_meta("uint8"))
    arrays = payload.to_arrays()
    arrays["labels"] = arrays["labels"].astype(np.int32)
    with pytest.raises(PayloadError, match="labels"):
        CondensedPayload.from_arrays(arrays, payload.wire_meta())
    with pytest.raises(PayloadError, match="images: missing"):
        CondensedPayload.from_arrays({"labels": arrays["labels"]}, payload.wire_meta())


@pytest.mark.parametrize("change,match", [
    ({"surprise": 1}, "unknown key"),
    ({"ipc": "ten"}, "meta.ipc"),
    ({"ipc": 2.5}, "meta.ipc"),
    ({"mean": 0.3}, "meta.mean"),
    ({"method": 3}, "meta.method"),
])
def test_meta_from_dict_is_strict(change: dict, match: str) -> None:
    values = {**make_payload([1] * 10).meta.to_dict(), **change}
    with pytest.raises(PayloadError, match=match):
        PayloadMeta.from_dict(values)
    with pytest.raises(PayloadError, match="missing"):
        PayloadMeta.from_dict({"method": "dm"})


def _corrupt(payload: CondensedPayload, kind: str) -> tuple[CondensedPayload, PayloadSpec, str]:
    images, labels = payload.images.clone(), payload.labels.clone()
    if kind == "nan":
        images[0, 0, 0, 0] = math.nan
        return replace(payload, images=images), SPEC, "NaN"
    if kind == "range":
        images[-1, 0, 3, 3] = 1.5
        return replace(payload, images=images), SPEC, r"\[0, 1\]"
    if kind == "shape":
        return replace(payload, images=images[:, :, :20]), SPEC, "shape"
    if kind == "dtype":
        return replace(payload, images=images.double()), SPEC, "float32"
    if kind == "label_dtype":
        return replace(payload, labels=labels.int()), SPEC, "int64"
    if kind == "label_range":
        labels[0] = 10
        return replace(payload, labels=labels), SPEC, "labels: values"
    if kind == "label_count":
        return replace(payload, labels=labels[1:]), SPEC, "labels: shape"
    if kind == "over_ipc":  # one class gets ipc + 1 images
        extra = payload.meta.ipc + 1
        return replace(payload, images=torch.cat([images, images[:1].repeat(extra, 1, 1, 1)]),
                       labels=torch.cat([labels, labels[:1].repeat(extra)])), SPEC, "more than meta.ipc"
    if kind == "oversized":
        return payload, dataclasses.replace(SPEC, max_bytes=100), "exceeds the cap"
    if kind == "unheld_class":
        counts = list(payload.meta.local_class_counts)
        counts[int(labels[0])] = 0
        return with_meta(payload, local_class_counts=counts), SPEC, "holds none"
    if kind == "num_classes":
        return payload, dataclasses.replace(SPEC, num_classes=100), "num_classes"
    if kind == "empty":
        return replace(payload, images=images[:0], labels=labels[:0]), SPEC, "empty"
    if kind == "epsilon":
        return with_meta(payload, epsilon=-1.0, delta=1e-5), SPEC, "meta.epsilon"
    if kind == "needs_dp":
        return payload, dataclasses.replace(SPEC, max_epsilon=10.0), "requires a DP payload"
    if kind == "std":
        return with_meta(payload, std=[0.0]), SPEC, "meta.std"
    raise AssertionError(kind)


KINDS = ["nan", "range", "shape", "dtype", "label_dtype", "label_range", "label_count", "over_ipc", "oversized",
         "unheld_class", "num_classes", "empty", "epsilon", "needs_dp", "std"]


@pytest.mark.parametrize("kind", KINDS)
def test_validator_rejects_each_malformed_field(kind: str) -> None:
    payload = make_payload([2] * 10)
    validate_payload(payload, SPEC)
    bad, spec, match = _corrupt(payload, kind)
    with pytest.raises(PayloadError, match=match):
        validate_payload(bad, spec)


def test_validator_enforces_the_epsilon_bound() -> None:
    spec = dataclasses.replace(SPEC, max_epsilon=5.0)
    validate_payload(make_payload([1] * 10, epsilon=4.0), spec)
    with pytest.raises(PayloadError, match="exceeds the server's bound"):
        validate_payload(make_payload([1] * 10, epsilon=6.0), spec)


per_class_counts = st.lists(st.integers(0, 4), min_size=10, max_size=10).filter(lambda c: sum(c) > 0)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(per_class=per_class_counts, seed=st.integers(0, 2**16), wire=st.sampled_from(["uint8", "float16"]))
def test_generated_valid_payloads_round_trip_and_pass(per_class: list[int], seed: int, wire: str) -> None:
    payload = make_payload(per_class, ipc=4, seed=seed, wire_dtype=wire)
    back = CondensedPayload.from_arrays(payload.to_arrays(), payload.wire_meta())
    validate_payload(back, SPEC)
    assert back.class_counts() == per_class


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(per_class=per_class_counts, seed=st.integers(0, 2**16), kind=st.sampled_from(KINDS),
       bad_value=st.sampled_from([math.nan, math.inf, -math.inf, -0.01, 1.01, 255.0]))
def test_generated_malformed_payloads_are_rejected(per_class: list[int], seed: int, kind: str,
                                                   bad_value: float) -> None:
    payload = make_payload(per_class, ipc=4, seed=seed)
    bad, spec, _ = _corrupt(payload, kind)
    with pytest.raises(PayloadError):
        validate_payload(bad, spec)
    # a single bad pixel anywhere is caught, whatever its value
    images = payload.images.clone()
    index = seed % len(images)
    images[index, 0, seed % 28, (seed // 28) % 28] = bad_value
    with pytest.raises(PayloadError, match="images"):
        validate_payload(replace(payload, images=images), SPEC)
