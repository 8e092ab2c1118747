"""Checkpoints: round trip, dataset mismatch, and clear errors for every kind of broken checkpoint."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
import torch

from shared.checkpoint import CARD_FILE, ModelCard, card_for_dataset, load_checkpoint, save_checkpoint
from shared.data import get_dataset_info
from shared.errors import CheckpointError
from shared.models import batchnorm_layers, build_model


def _trained_like_model() -> torch.nn.Module:
    """A small BN model whose running statistics differ from the defaults (so the round trip must keep them)."""
    torch.manual_seed(0)
    model = build_model("vgg11", num_classes=10, in_channels=1, image_size=28, width=4)
    model.train()
    with torch.no_grad():
        model(torch.randn(16, 1, 28, 28) * 2 + 1)
    return model.eval()


def _card(**fields: object) -> ModelCard:
    info = get_dataset_info("fashion_mnist")
    card = card_for_dataset(info, "vgg11", {"width": 4}, test_accuracy=0.5, seed=0, command="test")
    return dataclasses.replace(card, **fields)


@pytest.fixture
def checkpoint(tmp_path: Path) -> tuple[Path, torch.nn.Module]:
    model = _trained_like_model()
    directory = save_checkpoint(tmp_path / "ckpt", model, _card())
    return directory, model


def test_round_trip_gives_identical_outputs(checkpoint: tuple[Path, torch.nn.Module]) -> None:
    directory, model = checkpoint
    loaded, card = load_checkpoint(directory, expect_dataset="fashion_mnist")
    x = torch.randn(8, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
        _, features = loaded(x, return_features=True)
    assert features.shape == (8, loaded.feature_dim)
    assert not loaded.training
    assert card == _card(created=card.created)
    assert card.class_names[0] == "T-shirt/top" and card.mean == [0.2860]
    # The BN running statistics (DeepInversion's targets) survive the round trip.
    for a, b in zip(batchnorm_layers(model), batchnorm_layers(loaded), strict=True):
        assert torch.equal(a.running_mean, b.running_mean) and torch.equal(a.running_var, b.running_var)
    assert sorted(p.name for p in directory.iterdir()) == ["card.json", "model.safetensors"]


def test_dataset_mismatch_names_both_datasets(checkpoint: tuple[Path, torch.nn.Module]) -> None:
    directory, _ = checkpoint
    with pytest.raises(CheckpointError, match="trained on fashion_mnist but dataset cifar10 was requested"):
        load_checkpoint(directory, expect_dataset="cifar10")


def test_missing_directory_and_files(tmp_path: Path, checkpoint: tuple[Path, torch.nn.Module]) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nowhere")
    directory, _ = checkpoint
    (directory / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=re.escape("no weights file model.safetensors")):
        load_checkpoint(directory)
    (directory / CARD_FILE).unlink()
    with pytest.raises(CheckpointError, match=re.escape("card.json does not exist")):
        load_checkpoint(directory)


def test_corrupt_card_json(checkpoint: tuple[Path, torch.nn.Module]) -> None:
    directory, _ = checkpoint
    (directory / CARD_FILE).write_text('{"arch": "vgg11", ', encoding="utf-8")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_checkpoint(directory)


def _edit_card(directory: Path, **changes: object) -> None:
    values = json.loads((directory / CARD_FILE).read_text())
    for key, value in changes.items():
        if value is None:
            values.pop(key)
        else:
            values[key] = value
    (directory / CARD_FILE).write_text(json.dumps(values))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"dataset": None}, "missing key\\(s\\) dataset"),
        ({"colour": "red"}, "unknown key\\(s\\) colour"),
        ({"test_accuracy": 93.1}, "test_accuracy=93.1 must be a fraction"),
        ({"role": "oracle"}, "role='oracle'"),
        ({"mean": [0.1, 0.2]}, "mean/std have 2/1 values"),
        ({"arch": "resnet1000"}, "arch='resnet1000'.*cannot be built"),
    ],
)
def test_bad_card_fields(checkpoint: tuple[Path, torch.nn.Module], changes: dict, message: str) -> None:
    directory, _ = checkpoint
    _edit_card(directory, **changes)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(directory)


def test_weights_that_do_not_fit_the_arch(checkpoint: tuple[Path, torch.nn.Module]) -> None:
    directory, _ = checkpoint
    _edit_card(directory, arch_kwargs={"width": 8})
    with pytest.raises(CheckpointError, match=re.escape("do not fit arch vgg11: shape mismatch: body.0.weight")):
        load_checkpoint(directory)
    _edit_card(directory, arch="resnet8", arch_kwargs={"width": 4})
    with pytest.raises(CheckpointError, match="do not fit arch resnet8: missing: "):
        load_checkpoint(directory)


def test_corrupted_weights_file(checkpoint: tuple[Path, torch.nn.Module]) -> None:
    directory, _ = checkpoint
    (directory / "model.safetensors").write_bytes(b"\x00\x01not a safetensors file")
    with pytest.raises(CheckpointError, match="corrupted or not safetensors"):
        load_checkpoint(directory)


def test_failed_save_keeps_the_previous_checkpoint(checkpoint: tuple[Path, torch.nn.Module]) -> None:
    directory, model = checkpoint
    before = (directory / CARD_FILE).read_text()
    with pytest.raises(CheckpointError, match="needs a TorchScript model"):
        save_checkpoint(directory, model, _card(format="torchscript", test_accuracy=0.9))
    assert (directory / CARD_FILE).read_text() == before
    assert [p.name for p in directory.parent.iterdir()] == ["ckpt"]  # no temporary leftovers
    load_checkpoint(directory)


def test_save_refuses_an_invalid_card(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="num_classes"):
        save_checkpoint(tmp_path / "x", _trained_like_model(), _card(num_classes=0))
    assert not (tmp_path / "x").exists()
