"""Teacher training, evaluation and import through the ``condex teacher`` CLI, on real Fashion-MNIST subsets,
plus a fresh evaluation of the committed default teacher against its card."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

import shared.cli
from server.teacher import DataOptions, load_split, read_state_dict
from shared.checkpoint import load_checkpoint
from shared.config.teacher import TeacherConfig, parse_arch_kwargs
from shared.errors import CheckpointError, ConfigError
from shared.models import batchnorm_layers
from shared.train import evaluate, random_crop

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TEACHER = ROOT / "assets" / "teachers" / "fashion_mnist"
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")  # users still ship TorchScript
TINY = ["--dataset", "fashion_mnist", "--limit-test", "500", "--device", "cpu"]


def condex(*argv: str, monkeypatch: pytest.MonkeyPatch) -> int:
    """Run the real ``condex`` entry point with only this module's commands (others may not be importable)."""
    monkeypatch.setattr(shared.cli, "COMMAND_MODULES", ("server.teacher",))
    return shared.cli.main(list(argv))


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A VGG-11 (width 4) trained for one epoch on 1000 real FMNIST images through ``condex teacher train``."""
    out = tmp_path_factory.mktemp("teacher") / "tiny"
    with pytest.MonkeyPatch.context() as mp:
        code = condex("teacher", "train", *TINY, "--arch", "vgg11", "--arch-kwargs", "width=4", "--epochs", "1",
                      "--batch-size", "32", "--lr", "0.05", "--limit-train", "1000", "--out", str(out), "--quiet",
                      monkeypatch=mp)
    assert code == 0
    return out


def _test_subset() -> DataOptions:
    return DataOptions(dataset="fashion_mnist", limit_test=500)


def test_cli_train_writes_a_checkpoint_with_measured_accuracy(tiny_teacher: Path) -> None:
    model, card = load_checkpoint(tiny_teacher, expect_dataset="fashion_mnist")
    assert card.arch == "vgg11" and card.arch_kwargs == {"width": 4} and card.role == "teacher"
    assert card.provenance["train_images"] == 1000 and card.provenance["test_images"] == 500
    # One short epoch on real data already beats chance (10%) by far; a broken loop would not.
    assert card.test_accuracy is not None and card.test_accuracy > 0.3
    assert evaluate(model, load_split(_test_subset(), "test")) == pytest.approx(card.test_accuracy, abs=1e-5)
    assert "condex teacher train --dataset fashion_mnist --arch vgg11 --arch-kwargs width=4 --epochs 1" in card.command
    assert "--limit-train 1000" in card.command and f"--out {tiny_teacher}" in card.command
    assert len(batchnorm_layers(model)) == 8


def test_cli_eval_reproduces_the_card(tiny_teacher: Path, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    code = condex("teacher", "eval", "--checkpoint", str(tiny_teacher), *TINY, "--tolerance", "0.01",
                  monkeypatch=monkeypatch)
    out = capsys.readouterr().out
    assert code == 0, out
    assert "difference: +0.00 points" in out and "(500 images)" in out


def test_cli_eval_rejects_another_dataset(tiny_teacher: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    code = condex("teacher", "eval", "--checkpoint", str(tiny_teacher), "--dataset", "mnist", monkeypatch=monkeypatch)
    assert code == 2
    assert "trained on fashion_mnist but dataset mnist was requested" in capsys.readouterr().err


def test_import_state_dict_with_wrappers(tiny_teacher: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model, card = load_checkpoint(tiny_teacher)
    weights = tmp_path / "mine.pt"
    # A DataParallel-style checkpoint dict, as people save them.
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}, "epoch": 3}, weights)
    out = tmp_path / "imported"
    code = condex("teacher", "import", *TINY, "--arch", "vgg11", "--arch-kwargs", "width=4", "--weights",
                  str(weights), "--out", str(out), monkeypatch=monkeypatch)
    assert code == 0
    imported, imported_card = load_checkpoint(out, expect_dataset="fashion_mnist")
    assert imported_card.test_accuracy == pytest.approx(card.test_accuracy, abs=1e-5)
    assert imported_card.format == "safetensors" and imported_card.provenance["weights"] == str(weights)
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(model(x), imported(x))


def test_import_state_dict_of_another_arch_fails(tiny_teacher: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    weights = tmp_path / "mine.safetensors"
    from safetensors.torch import save_file

    save_file(load_checkpoint(tiny_teacher)[0].state_dict(), str(weights))
    code = condex("teacher", "import", *TINY, "--arch", "vgg11", "--arch-kwargs", "width=8", "--weights",
                  str(weights), "--out", str(tmp_path / "bad"), monkeypatch=monkeypatch)
    assert code == 2
    assert "do not fit arch vgg11" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("how", ["script", "trace"])
def test_import_torchscript(how: str, tiny_teacher: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model, card = load_checkpoint(tiny_teacher)
    x = torch.randn(4, 1, 28, 28)
    # Scripting keeps forward(x, return_features); tracing freezes it to logits only.
    scripted = torch.jit.script(model) if how == "script" else torch.jit.trace(model, x)
    path = tmp_path / "model.pt"
    torch.jit.save(scripted, str(path))
    out = tmp_path / "ts"
    code = condex("teacher", "import", *TINY, "--torchscript", str(path), "--out", str(out), monkeypatch=monkeypatch)
    assert code == 0
    imported, imported_card = load_checkpoint(out, expect_dataset="fashion_mnist")
    assert imported_card.format == "torchscript" and imported_card.arch == "torchscript"
    assert imported_card.test_accuracy == pytest.approx(card.test_accuracy, abs=1e-5)
    with torch.no_grad():
        assert torch.allclose(model(x), imported(x), atol=1e-5)
        _, features = imported(x, return_features=True)
    assert features.shape == (4, model.feature_dim if how == "script" else 10)
    assert imported.returns_features == (how == "script")


def test_import_rejects_a_model_with_the_wrong_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    wrong = torch.jit.script(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 7)))
    path = tmp_path / "wrong.pt"
    torch.jit.save(wrong, str(path))
    code = condex("teacher", "import", *TINY, "--torchscript", str(path), "--out", str(tmp_path / "w"),
                  monkeypatch=monkeypatch)
    assert code == 2
    assert "returns shape (2, 7) but dataset fashion_mnist needs (N, 10)" in capsys.readouterr().err


def test_read_state_dict_errors(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        read_state_dict(tmp_path / "none.pt")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="cannot be read"):
        read_state_dict(tmp_path / "junk.pt")


def test_teacher_config_validation() -> None:
    TeacherConfig().validate()
    assert parse_arch_kwargs("width=16, norm=batchnorm,width_mult=0.5") == {
        "width": 16, "norm": "batchnorm", "width_mult": 0.5}
    with pytest.raises(ConfigError, match=re.escape("teacher.arch='nope'")):
        TeacherConfig(arch="nope").validate()
    with pytest.raises(ConfigError, match=re.escape("teacher.arch_kwargs='width'")):
        TeacherConfig(arch_kwargs="width").validate()
    with pytest.raises(ConfigError, match=re.escape("teacher.schedule")):
        TeacherConfig(schedule="linear").validate()


def test_random_crop_shifts_within_padding() -> None:
    pixels = torch.zeros(64, 1, 8, 8)
    pixels[:, :, 3, 3] = 1.0
    cropped = random_crop(pixels, padding=1, generator=torch.Generator().manual_seed(0))
    rows, cols = (cropped[:, 0] == 1).nonzero()[:, 1], (cropped[:, 0] == 1).nonzero()[:, 2]
    assert cropped.sum() == 64 and set(rows.tolist()) == {2, 3, 4} and set(cols.tolist()) == {2, 3, 4}
    # Each colour image is one window of the zero-padded image, the same window for all channels.
    colour = torch.rand(16, 3, 8, 8)
    cropped = random_crop(colour, padding=2)
    padded = torch.nn.functional.pad(colour, (2, 2, 2, 2))
    for image, window in zip(padded, cropped, strict=True):
        assert any(torch.equal(image[:, i:i + 8, j:j + 8], window) for i in range(5) for j in range(5))


def test_committed_default_teacher_matches_its_card() -> None:
    """The committed FMNIST teacher: fresh accuracy on the real 10k test split equals the card's (±0.2 points)."""
    model, card = load_checkpoint(DEFAULT_TEACHER, expect_dataset="fashion_mnist")
    assert (DEFAULT_TEACHER / "model.safetensors").stat().st_size < 5 * 2**20
    assert batchnorm_layers(model), "DeepInversion needs BatchNorm layers in the default teacher"
    test = load_split(DataOptions(dataset="fashion_mnist"), "test")
    assert len(test) == 10_000
    accuracy = evaluate(model, test, stats=(tuple(card.mean), tuple(card.std)))
    assert card.test_accuracy is not None and card.test_accuracy >= 0.91
    assert abs(accuracy - card.test_accuracy) * 100 <= 0.2, (accuracy, card.test_accuracy)
    assert json.loads((DEFAULT_TEACHER / "card.json").read_text())["command"].startswith("condex teacher train")
