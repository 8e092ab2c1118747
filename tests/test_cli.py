"""The ``condex`` command line: every stage reachable, help that reads, bad input exits 2 with the field."""

from __future__ import annotations

import subprocess
import sys

import pytest

from shared.cli import build_parser, main


def test_every_stage_is_a_subcommand() -> None:
    help_text = build_parser().format_help()
    for command in ("teacher", "condense", "distill", "export"):
        assert command in help_text


@pytest.mark.parametrize("argv", [["teacher", "train"], ["teacher", "eval"], ["teacher", "import"],
                                  ["condense"], ["distill"], ["export"]])
def test_subcommand_help(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--help"])
    assert exit_info.value.code == 0
    assert "usage: condex" in capsys.readouterr().out


def test_console_script_entry_point() -> None:
    result = subprocess.run([sys.executable, "-m", "shared.cli", "--help"], capture_output=True, text=True,
                            check=False, timeout=120)
    assert result.returncode == 0 and "condense" in result.stdout


def test_unknown_dataset_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["condense", "--dataset", "imagenet_typo", "--output", "unused.safetensors"])
    err = capsys.readouterr().err
    assert code == 2 and "imagenet_typo" in err and "fashion_mnist" in err


def test_own_folder_data_through_condense_and_distill_from_another_directory(
        tmp_path, monkeypatch: pytest.MonkeyPatch, fmnist_test) -> None:
    """Issue 12.2: a site's ImageFolder (two Fashion-MNIST classes, named) is condensed with --teacher and
    distilled by `condex distill` with the default teacher, found from a directory outside the checkout."""
    from PIL import Image

    from shared.checkpoint import load_checkpoint

    for label, name in ((3, "Dress"), (7, "sneaker")):
        folder = tmp_path / "site" / "train" / name
        folder.mkdir(parents=True)
        for i, j in enumerate((fmnist_test.labels == label).nonzero().flatten()[:6].tolist()):
            Image.fromarray(fmnist_test.images[j, 0].numpy()).save(folder / f"{i}.png")
    monkeypatch.chdir(tmp_path)
    from shared.paths import PROJECT_ROOT

    teacher = PROJECT_ROOT / "assets" / "teachers" / "fashion_mnist"
    assert main(["condense", "--dataset", "folder", "--data-root", "site", "--teacher", str(teacher), "--method",
                 "real", "--ipc", "2", "--policy-require-dp", "false", "--output", "site.safetensors", "--quiet"]) == 0
    argv = ["distill", "--condensed", "site.safetensors", "--mode", "cs-only", "--epochs", "1", "--budget-seconds",
            "0", "--set", "distill.kd_steps=2", "--set", "distill.eval_samples=100", "--set",
            "distill.checkpoint_every=0", "--set", "distill.grid_every=0", "--no-progress", "--device", "cpu",
            "--out", "run"]
    assert main([*argv, "--data-root", "/usr/share/datasets/fashion-mnist"]) == 0
    _, card = load_checkpoint(tmp_path / "run" / "student")
    assert card.class_names == load_checkpoint(teacher)[1].class_names and card.num_classes == 10


def test_teacher_of_folder_data_is_evaluated_on_the_data_root(tmp_path) -> None:
    import numpy as np

    from server.cli import teacher_split
    from shared.checkpoint import ModelCard
    from shared.errors import ConfigError

    card = ModelCard("resnet8", "folder", 3, 1, 8, [0.5], [0.5], class_names=["cat", "dog", "emu"])
    with pytest.raises(ConfigError, match="--data-root"):
        teacher_split(card, "test", "", False)
    np.savez(tmp_path / "test.npz", images=np.zeros((4, 8, 8), np.uint8), labels=np.array([0, 2, 2, 1]))
    test = teacher_split(card, "test", str(tmp_path), False)
    assert test.labels.tolist() == [0, 2, 2, 1] and test.info.class_names == ("cat", "dog", "emu")
