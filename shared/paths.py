"""Where condex's own files are: the configs, the committed teacher and other project-relative defaults.

``PROJECT_ROOT`` is the directory that holds the ``shared`` package: the repository root in a checkout
(editable install) and ``site-packages`` in a wheel install, where ``configs/`` and ``assets/`` are shipped
beside the code as package data. A configured relative path (``teacher.checkpoint=assets/teachers/...``)
therefore works from any working directory."""

from __future__ import annotations

import os
from pathlib import Path

from shared.errors import CheckpointError

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def resolve_path(value: str | Path, key: str, hint: str = "") -> Path:
    """A configured path: absolute; else relative to ``$CONDEX_ROOT``, the working directory or the project
    (first that exists). ``CheckpointError`` names ``key``, every place tried and ``hint``."""
    path = Path(value).expanduser()
    if path.is_absolute():
        candidates = [path]
    else:
        candidates = [Path.cwd() / path, PROJECT_ROOT / path]
        if os.environ.get("CONDEX_ROOT"):
            candidates.insert(0, Path(os.environ["CONDEX_ROOT"]) / path)
    for candidate in candidates:
        if candidate.exists():
            return candidate.resolve()
    tried = ", ".join(str(c) for c in candidates)
    raise CheckpointError(f"{key}={str(value)!r} not found (tried {tried}){'; ' + hint if hint else ''}")
