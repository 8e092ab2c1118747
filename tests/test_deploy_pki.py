"""``scripts/deploy/pki.py`` writes every file through a fresh ``O_EXCL | O_NOFOLLOW`` temp file (mode 0600,
random name) and ``os.replace``: planted symlinks at the destination or at the old predictable temp name are
never followed, a stale temp file does not get in the way, and private keys are 0600 from creation."""

from __future__ import annotations

import importlib.util
import os
import stat
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / "deploy" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


pki = _load("pki")

PRIVATE = ("ca.key", "superlink.key", "supernode-site-a")
PUBLIC = ("ca.crt", "superlink.crt", "supernode-site-a.pub")


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_generate_sets_key_and_certificate_modes(tmp_path: Path) -> None:
    old = os.umask(0)  # a permissive umask must not widen the private keys
    try:
        pki.generate(tmp_path, ["127.0.0.1"], ["site-a"])
    finally:
        os.umask(old)
    for name in PRIVATE:
        assert _mode(tmp_path / name) == 0o600, name
    for name in PUBLIC:
        assert _mode(tmp_path / name) == 0o644, name
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(PRIVATE + PUBLIC)  # no temp files left


def test_private_key_is_0600_from_creation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every file descriptor pki opens for writing is created O_EXCL | O_NOFOLLOW with mode 0600."""
    calls: list[tuple[str, int, int]] = []
    real_open = os.open

    def spy(path: Any, flags: int, mode: int = 0o777, *args: Any, **kwargs: Any) -> int:
        if flags & os.O_WRONLY:
            calls.append((os.fspath(path), flags, mode))
        return real_open(path, flags, mode, *args, **kwargs)

    monkeypatch.setattr(pki.os, "open", spy)
    pki.make_supernode_keys(tmp_path, "site-a")
    assert len(calls) == 2
    for path, flags, mode in calls:
        assert Path(path).parent == tmp_path and Path(path).name.startswith(".supernode-site-a")
        assert flags & os.O_CREAT and flags & os.O_EXCL and flags & os.O_NOFOLLOW
        assert mode == 0o600
    assert len({path for path, _, _ in calls}) == 2  # a fresh random name each time


def test_symlink_at_destination_is_refused(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    out = tmp_path / "keys"
    out.mkdir()
    (out / "ca.key").symlink_to(victim)
    with pytest.raises(FileExistsError, match="symlink"):
        pki.make_ca(out)
    assert victim.read_text() == "precious\n"
    assert (out / "ca.key").is_symlink()


def test_planted_symlink_at_the_old_temp_name_is_not_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    out = tmp_path / "keys"
    out.mkdir()
    for name in PRIVATE + PUBLIC:  # the predictable names the old code opened with O_TRUNC
        (out / f".{name}.tmp").symlink_to(victim)
    pki.generate(out, ["127.0.0.1"], ["site-a"])
    assert victim.read_text() == "precious\n"
    for name in PRIVATE + PUBLIC:
        assert not (out / name).is_symlink() and (out / name).stat().st_size > 0


def test_stale_temp_file_does_not_block_or_leak(tmp_path: Path) -> None:
    out = tmp_path / "keys"
    out.mkdir()
    stale = out / ".supernode-site-a.tmp"
    stale.write_bytes(b"left over by a crashed run")
    stale.chmod(0o644)
    keys = pki.make_supernode_keys(out, "site-a")
    assert keys.private_key.read_bytes().startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")
    assert _mode(keys.private_key) == 0o600
    assert stale.read_bytes() == b"left over by a crashed run"  # neither reused nor truncated


def test_overwrite_replaces_the_file_and_a_failed_write_leaves_no_temp(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "ca.key"
    target.write_text("old\n")
    target.chmod(0o644)
    pki._write(target, b"new\n", private=True)
    assert target.read_bytes() == b"new\n" and _mode(target) == 0o600

    def broken_fsync(fd: int) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(pki.os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="disk full"):
        pki._write(target, b"newer\n", private=True)
    assert target.read_bytes() == b"new\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ca.key"]
