"""condex as users install it (issue 12.4): a wheel that carries configs/ and the default teacher and works
outside the checkout, a `condex --help` that imports no torch, and `condex --version`."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(argv: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 300) -> str:
    result = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    assert result.returncode == 0, f"{argv}: {result.stdout}\n{result.stderr}"
    return result.stdout


def test_help_and_version_import_no_torch(tmp_path: Path) -> None:
    probe = ("import sys, shared.cli\n"
             "for argv in (['--help'], ['--version']):\n"
             "    try:\n        shared.cli.main(argv)\n    except SystemExit as e:\n        assert e.code == 0\n"
             "print('torch loaded:', 'torch' in sys.modules)")
    out = _run([sys.executable, "-c", probe], tmp_path)
    assert "torch loaded: False" in out and "condex 0.1.0" in out
    for command in ("teacher", "condense", "distill", "export"):
        assert command in out


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """condex built as a wheel and installed (without dependencies: they are the venv's) into a fresh folder."""
    wheels = tmp_path_factory.mktemp("wheel")
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels),
          str(ROOT)], ROOT)
    (wheel,) = wheels.glob("condex-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in ("configs/condex.yaml", "configs/setting/fmnist_cpu.yaml", "shared/cli.py",
                   "assets/teachers/fashion_mnist/card.json", "assets/teachers/fashion_mnist/model.safetensors"):
        assert needed in names, f"{needed} missing from {wheel.name}"
    target = tmp_path_factory.mktemp("site")
    _run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)], ROOT)
    return target


def test_wheel_works_outside_the_checkout(installed: Path, tmp_path: Path) -> None:
    # PYTHONPATH puts the installed copy before the venv's editable finder; nothing is read from the checkout
    env = {**os.environ, "PYTHONPATH": str(installed), "CONDEX_QUIET": "1"}
    env.pop("CONDEX_ROOT", None)
    where = _run([sys.executable, "-c", "import shared, shared.config as c, shared.paths as p\n"
                  "print(shared.__file__); print(c.CONFIG_DIR); cfg = c.load_config(); print(cfg.teacher.arch)\n"
                  "print(p.resolve_path(cfg.teacher.checkpoint, 'teacher.checkpoint'))"], tmp_path, env)
    shared_file, config_dir, arch, teacher = where.split()
    for path in (shared_file, config_dir, teacher):
        assert path.startswith(str(installed)), where
    assert arch == "vgg11"
    assert "--dataset" in _run([sys.executable, "-m", "shared.cli", "condense", "--help"], tmp_path, env)
    out = _run([sys.executable, "-m", "shared.cli", "condense", "--dataset", "digits", "--method", "real", "--ipc",
                "1", "--output", "site.safetensors", "--quiet"], tmp_path, env)
    assert "10 images for 10 held classes" in out and (tmp_path / "site.safetensors").is_file()
    evaluated = _run([sys.executable, "-m", "shared.cli", "teacher", "eval", "--limit-test", "200", "--device",
                      "cpu"], tmp_path, env)
    assert str(installed) in evaluated and "fresh accuracy" in evaluated
