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
