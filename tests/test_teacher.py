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
        if how == "script":
            _, features = imported(x, return_features=True)
            assert features.shape == (4, model.feature_dim) and imported.feature_dim == model.feature_dim
        else:  # a traced model has no feature output: asking for features fails, logits never stand in for them
            assert imported.feature_dim == 0
            with pytest.raises(CheckpointError, match="no penultimate features"):
                imported(x, return_features=True)
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


# ---- torchvision / timm teachers (issue 12.3) -----------------------------------------------------------
DIGITS = ["--dataset", "digits", "--device", "cpu"]


@pytest.fixture(scope="module")
def torchvision_resnet18(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module]:
    """A torchvision ResNet-18 with the documented small-image stem (1 channel, 3x3 stride 1, no max-pool),
    trained for one epoch on scikit-learn digits, saved as torchvision's own state dict (``conv1.weight``...)."""
    from shared.data import load_dataset
    from shared.device import torch_threads
    from shared.models import build_model
    from shared.train import train_classifier

    torch.manual_seed(0)
    model = build_model("torchvision:resnet18", num_classes=10, in_channels=1, image_size=8)
    with torch_threads(1):
        train_classifier(model, load_dataset("digits", "train"), None, epochs=1, batch_size=64, lr=0.05,
                         progress=False, augment="none")
    weights = tmp_path_factory.mktemp("tv") / "r18.pt"
    torch.save(model.net.state_dict(), weights)  # the plain torchvision module's keys, as a user saves them
    assert "conv1.weight" in model.net.state_dict() and "fc.weight" in model.net.state_dict()
    return weights, model.eval()


def test_torchvision_resnet18_import_keeps_bn_and_real_features(
        torchvision_resnet18: tuple[Path, torch.nn.Module], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from server.distillation import CondensedSet, Distiller
    from shared.config import DistillConfig
    from shared.data import load_dataset

    weights, trained = torchvision_resnet18
    out = tmp_path / "r18"
    assert condex("teacher", "import", *DIGITS, "--torchvision", "resnet18", "--weights", str(weights),
                  "--out", str(out), monkeypatch=monkeypatch) == 0, capsys.readouterr().err
    teacher, card = load_checkpoint(out, expect_dataset="digits")
    assert card.arch == "torchvision:resnet18" and card.arch_kwargs == {"adapt": "small"}
    assert card.test_accuracy is not None and card.test_accuracy > 0.6
    assert len(batchnorm_layers(teacher)) == 20 and teacher.feature_dim == 512
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        logits, features = teacher(x, return_features=True)
        net = trained.net  # the penultimate features are avgpool's output, not the logits
        stem = net.relu(net.bn1(net.conv1(x)))
        pooled = torch.flatten(net.avgpool(net.layer4(net.layer3(net.layer2(net.layer1(stem))))), 1)
    assert torch.allclose(features, pooled, atol=1e-5) and torch.allclose(logits, trained(x), atol=1e-5)
    # mode mi* with the BN-statistics loss and feature alignment on the imported teacher
    train = load_dataset("digits", "train")
    cfg = DistillConfig(mode="mi*", epochs=1, budget_seconds=0, synthesis_batch_size=8, generator_width=8,
                        latent_dim=16, kd_batch_size=16, kd_steps=1, condensed_batch_size=8, discriminator_hidden=16,
                        warmup_epochs=0, eval_every_seconds=0.0, eval_samples=50, checkpoint_every=0, grid_every=0,
                        bn_weight=10.0)
    distiller = Distiller(cfg, teacher, card, CondensedSet.from_real(train, 2), load_dataset("digits", "test"),
                          tmp_path / "run", seed=0, progress=False)
    assert distiller.guidance is not None
    batch = distiller.method.synthesize()
    assert batch.losses["bn"] > 0 and batch.losses["fa"] != 0
    assert batch.features is not None and batch.features.shape == (8, 512)
    assert distiller.fit().epochs == 1


def test_torchvision_import_errors_name_the_real_problem(
        torchvision_resnet18: tuple[Path, torch.nn.Module], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    weights, _ = torchvision_resnet18
    # the zoo's resnet18 is another module: the keys are listed and --torchvision suggested, not `width`
    assert condex("teacher", "import", *DIGITS, "--arch", "resnet18", "--weights", str(weights), "--out",
                  str(tmp_path / "a"), monkeypatch=monkeypatch) == 2
    err = capsys.readouterr().err
    assert "--torchvision" in err and "unexpected" in err and "fc.weight" in err and "width" not in err
    # the published ImageNet stem does not fit weights trained with the small one: --adapt is named
    assert condex("teacher", "import", "--dataset", "cifar10", "--no-download", "--device", "cpu", "--no-eval",
                  "--torchvision", "resnet18", "--adapt", "none", "--weights", str(weights), "--out",
                  str(tmp_path / "b"), monkeypatch=monkeypatch) == 2
    err = capsys.readouterr().err
    assert "conv1.weight (64, 1, 3, 3) vs (64, 3, 7, 7)" in err and "--adapt" in err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_low_accuracy_import_is_refused_unless_forced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from shared.models import build_model

    torch.manual_seed(0)
    untrained = build_model("torchvision:mobilenet_v2", num_classes=10, in_channels=1, image_size=8)
    weights = tmp_path / "mnv2.pt"
    torch.save(untrained.net.state_dict(), weights)
    argv = ["teacher", "import", *DIGITS, "--torchvision", "mobilenet_v2", "--weights", str(weights),
            "--mean", "0.5", "--std", "0.25"]
    assert condex(*argv, "--out", str(tmp_path / "refused"), monkeypatch=monkeypatch) == 2
    err = capsys.readouterr().err
    assert "--force" in err and "chance 10.0%" in err and not (tmp_path / "refused").exists()
    assert condex(*argv, "--force", "--out", str(tmp_path / "forced"), monkeypatch=monkeypatch) == 0
    assert "WARNING" in capsys.readouterr().out
    _, card = load_checkpoint(tmp_path / "forced")
    assert card.provenance["low_accuracy_forced"] is True and card.test_accuracy is not None
    assert card.mean == [0.5] and card.std == [0.25]  # the declared normalisation is kept in the card


def test_timm_teacher_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("timm")
    from shared.models import build_model

    model = build_model("timm:resnet18", num_classes=10, in_channels=1, image_size=8)
    weights = tmp_path / "timm.pt"
    torch.save(model.net.state_dict(), weights)
    assert condex("teacher", "import", *DIGITS, "--timm", "resnet18", "--weights", str(weights), "--force",
                  "--out", str(tmp_path / "t"), monkeypatch=monkeypatch) == 0
    teacher, _ = load_checkpoint(tmp_path / "t")
    _, features = teacher(torch.randn(2, 1, 8, 8), return_features=True)
    assert features.shape == (2, teacher.feature_dim) and len(batchnorm_layers(teacher)) > 0
