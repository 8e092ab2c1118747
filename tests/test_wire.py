"""Wire format: condensed payloads and student weights through Flower records, and hostile replies."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from flwr.app import Array, ConfigRecord, RecordDict
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects
from flwr.supercore.inflatable.inflatable_utils import inflate_object_from_contents

from client.condense import condense
from shared import wire
from shared.checkpoint import card_for_dataset
from shared.config import CondenseConfig
from shared.data import LabeledImages
from shared.errors import CheckpointError, PayloadError
from shared.models import build_model
from shared.payload import CondensedPayload, PayloadSpec, validate_payload


@pytest.fixture(scope="module")
def payload(fmnist_train: LabeledImages) -> CondensedPayload:
    """A real payload: the few-shot `real` condenser on 600 Fashion-MNIST images (3 per class)."""
    return condense(fmnist_train.subset(range(600)), CondenseConfig(method="real", ipc=3), progress=False)


def _over_the_wire(content: RecordDict) -> RecordDict:
    """Serialise the record tree to bytes and inflate it again, as Flower does between processes."""
    contents = {oid: obj.deflate() for oid, obj in get_all_nested_objects(content).items()}
    inflated = inflate_object_from_contents(content.object_id, contents)
    assert isinstance(inflated, RecordDict)
    return inflated


@pytest.mark.parametrize("wire_dtype", ["uint8", "float16"])
def test_payload_round_trip(payload: CondensedPayload, wire_dtype: str) -> None:
    payload.meta.wire_dtype = wire_dtype
    content = wire.payload_to_content(payload, {"epsilon": None, "condense-seconds": 1.5}, {"source": "unit"})
    back = wire.payload_from_content(_over_the_wire(content), max_bytes=1 << 20)
    tol = 0.5 / 255 if wire_dtype == "uint8" else 1e-3
    assert back.images.dtype == torch.float32 and back.images.shape == payload.images.shape
    assert torch.allclose(back.images, payload.images, atol=tol)
    assert torch.equal(back.labels, payload.labels)
    assert back.meta == payload.meta
    assert wire.node_metrics(content) == {"condense-seconds": 1.5}  # None-valued metrics are left out
    assert wire.node_info(content) == {"source": "unit"}
    validate_payload(back, PayloadSpec(num_classes=10, image_shape=(1, 28, 28), max_ipc=3))


def test_size_cap_is_checked_before_decoding(payload: CondensedPayload) -> None:
    content = wire.payload_to_content(payload)
    size = wire.content_bytes(content)
    assert size > payload.images.numel()  # uint8 pixels + int64 labels + npy headers
    with pytest.raises(PayloadError, match="max_payload_bytes"):
        wire.payload_from_content(content, max_bytes=size // 2)


def test_missing_records_are_named(payload: CondensedPayload) -> None:
    content = wire.payload_to_content(payload)
    del content[wire.PAYLOAD_META]
    with pytest.raises(PayloadError, match="payload-meta"):
        wire.payload_from_content(content)
    with pytest.raises(PayloadError, match="ArrayRecord 'payload'"):
        wire.payload_from_content(RecordDict({"other": ConfigRecord({"a": 1})}))


def test_unexpected_and_mistyped_arrays_are_rejected(payload: CondensedPayload) -> None:
    content = wire.payload_to_content(payload)
    content[wire.PAYLOAD]["weights"] = Array(np.zeros(3, dtype=np.float32))
    with pytest.raises(PayloadError, match="unexpected array"):
        wire.payload_from_content(content)
    content = wire.payload_to_content(payload)
    content[wire.PAYLOAD]["images"] = Array(payload.images.numpy().astype(np.float64))
    with pytest.raises(PayloadError, match="images: wire dtype"):
        wire.payload_from_content(content)


def test_pickled_objects_are_never_loaded(payload: CondensedPayload) -> None:
    buffer = io.BytesIO()
    np.save(buffer, np.array([{"evil": 1}], dtype=object), allow_pickle=True)
    content = wire.payload_to_content(payload)
    content[wire.PAYLOAD]["labels"] = Array("object", (1,), "numpy.ndarray", buffer.getvalue())
    with pytest.raises(PayloadError, match=r"payload\.labels: dtype object is not a plain numeric dtype"):
        wire.payload_from_content(content)


def test_bad_metadata_is_named(payload: CondensedPayload) -> None:
    content = wire.payload_to_content(payload)
    content[wire.PAYLOAD_META]["favourite_colour"] = "blue"
    with pytest.raises(PayloadError, match="favourite_colour"):
        wire.payload_from_content(content)


def test_labels_outside_the_teacher_classes_fail_validation(payload: CondensedPayload) -> None:
    content = wire.payload_to_content(payload)
    labels = payload.labels.numpy().copy()
    labels[0] = 12
    content[wire.PAYLOAD]["labels"] = Array(labels)
    decoded = wire.payload_from_content(content)
    with pytest.raises(PayloadError, match="labels"):
        validate_payload(decoded, PayloadSpec(num_classes=10, image_shape=(1, 28, 28), max_ipc=3))


def test_student_round_trip(fmnist_train: LabeledImages) -> None:
    torch.manual_seed(0)
    model = build_model("lenet5_half", num_classes=10, in_channels=1, image_size=28).eval()
    card = card_for_dataset(fmnist_train.info, "lenet5_half", role="student")
    back, back_card = wire.student_from_content(_over_the_wire(wire.student_to_content(model, card)))
    x = fmnist_train.normalized()[:8]
    assert back_card == card
    assert torch.allclose(back(x), model(x), atol=1e-6)


def test_student_with_a_card_that_does_not_fit_is_refused(fmnist_train: LabeledImages) -> None:
    model = build_model("lenet5_half", num_classes=10, in_channels=1, image_size=28)
    card = card_for_dataset(fmnist_train.info, "lenet5", role="student")  # weights are lenet5_half
    with pytest.raises(CheckpointError, match="do not fit"):
        wire.student_from_content(wire.student_to_content(model, card))
    content = wire.student_to_content(model, card)
    content[wire.STUDENT_CARD] = ConfigRecord({"card-json": json.dumps({"arch": "x"})})
    with pytest.raises(CheckpointError, match="missing key"):
        wire.student_from_content(content)


def test_request_round_trip() -> None:
    content = wire.request_to_content({"condense.ipc": 5, "condense.epsilon": ""}, num_classes=10)
    assert wire.request_from_content(content) == {"condense.ipc": 5, "condense.epsilon": ""}
    assert wire.expected_classes(content) == 10
    assert wire.expected_classes(wire.request_to_content({})) is None


def test_request_carries_the_teachers_normalisation() -> None:
    content = wire.request_to_content({"condense.ipc": 5}, num_classes=10, mean=[0.2, 0.3, 0.4], std=[0.5, 0.6, 0.7])
    assert wire.expected_stats(content) == ((0.2, 0.3, 0.4), (0.5, 0.6, 0.7))
    assert wire.expected_classes(content) == 10
    assert wire.expected_stats(wire.request_to_content({}, num_classes=10)) is None
    content[wire.REQUEST_EXPECT] = ConfigRecord({"num-classes": 10, "mean": [0.2], "std": [0.0]})
    with pytest.raises(PayloadError, match="std > 0"):
        wire.expected_stats(content)
    content[wire.REQUEST_EXPECT] = ConfigRecord({"mean": [0.2, 0.3], "std": [0.5]})
    with pytest.raises(PayloadError, match="equally long"):
        wire.expected_stats(content)
