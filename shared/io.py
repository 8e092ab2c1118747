"""Atomic file writing: write to a temporary sibling, then rename, so readers never see half a file."""

from __future__ import annotations

import math
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def _publishable(target: Path) -> None:
    """mkdtemp/mkstemp create owner-only entries; give the published tree the usual umask modes."""
    umask = os.umask(0)
    os.umask(umask)
    if not target.is_dir():
        target.chmod(0o666 & ~umask)
        return
    target.chmod(0o777 & ~umask)
    for entry in target.rglob("*"):
        entry.chmod((0o777 if entry.is_dir() else 0o666) & ~umask)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        _publishable(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary file path next to ``path``; rename it onto ``path`` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix or ".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        _publishable(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise




# What atomic_write_bytes / atomic_path / atomic_dir leave behind when the process dies mid-write:
# ".<name>.<8 random chars>[.tmp|<suffix>]" and atomic_dir's ".<name>.old" backup.
_TEMP = re.compile(r"^\.(?P<name>.+)\.(?:[a-z0-9_]{8}(?:\.[A-Za-z0-9]+)?|old)$")


def remove_stale_temps(directory: str | Path, recursive: bool = False) -> list[Path]:
    """Delete the temporaries of interrupted atomic writes in ``directory`` (and its subfolders when
    ``recursive``); only call it on directories condex owns and no other process is writing to."""
    directory = Path(directory)
    removed: list[Path] = []
    if not directory.is_dir():
        return removed
    for entry in list(directory.iterdir()):
        if _TEMP.match(entry.name):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry)
        elif recursive and entry.is_dir() and not entry.is_symlink():
            removed += remove_stale_temps(entry, recursive=True)
    return removed


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary directory next to ``path``; it replaces ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield tmp
        _publishable(tmp)
        if path.exists():
            backup = path.with_name(f".{path.name}.old")
            shutil.rmtree(backup, ignore_errors=True)
            path.rename(backup)
            tmp.rename(path)
            shutil.rmtree(backup, ignore_errors=True)
        else:
            tmp.rename(path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def json_safe(value: Any) -> Any:
    """``value`` with every NaN/inf float (nested in dicts and lists) as None: JSON has neither, and an
    infinite epsilon written as null reads as "no privacy" rather than breaking the parser."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    return value
