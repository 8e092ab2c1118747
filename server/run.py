"""Run management for distillation: run directory, JSONL metrics, resumable checkpoints, RNG state,
wall-time accounting per phase, forward/backward profiling and PNG grids.

Layout of a run directory::

    run/metrics.jsonl     one JSON object per logged event (epoch losses, evaluations)
    run/state.pt          latest resumable checkpoint (models, optimisers, pool, RNG, counters, condensed-set hash)
    run/run.json          what ``--resume`` needs besides ``--out``: teacher, condensed set, seed, engine settings
    run/grids/*.png       synthetic vs condensed sample grids
    run/student/          the final student (safetensors + card, ``shared.checkpoint``)
    run/summary.json      final accuracy, timings, profile
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from shared.errors import CheckpointError
from shared.io import atomic_path, atomic_write_text, remove_stale_temps

STATE_FILE = "state.pt"
METRICS_FILE = "metrics.jsonl"
RUN_FILE = "run.json"

log = logging.getLogger("condex.run")


def rng_state() -> dict[str, Any]:
    """RNG states as tensors and plain Python values only, so ``state.pt`` loads with ``weights_only=True``."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    numpy_state = (kind, torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos), int(has_gauss), float(cached))
    state = {"torch": torch.get_rng_state(), "numpy": numpy_state, "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    keys = keys.numpy() if isinstance(keys, torch.Tensor) else np.asarray(keys)
    np.random.set_state((kind, keys.astype(np.uint32), pos, has_gauss, cached))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class RunDir:
    """Paths and files of one run; metrics are appended as JSON lines."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        # temp files of writes a kill -9 interrupted: never read, so removed before this run writes its own
        for stale in remove_stale_temps(self.path, recursive=True):
            log.info("removed %s, left by an interrupted write", stale)

    @property
    def state_file(self) -> Path:
        return self.path / STATE_FILE

    @property
    def metrics_file(self) -> Path:
        return self.path / METRICS_FILE

    def log(self, record: dict[str, Any]) -> None:
        with self.metrics_file.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")

    def read_metrics(self) -> list[dict[str, Any]]:
        """The logged records; a torn last line (the process was killed while appending it) is dropped."""
        if not self.metrics_file.is_file():
            return []
        lines = [line for line in self.metrics_file.read_text(encoding="utf-8", errors="replace").splitlines()
                 if line.strip()]
        records = []
        for number, line in enumerate(lines, 1):
            try:
                record = json.loads(line)
            except ValueError:
                if number == len(lines):
                    log.warning("%s: dropped a torn last line (interrupted write)", self.metrics_file)
                    break
                raise CheckpointError(f"{self.metrics_file}: line {number} is not JSON; the log was edited or "
                                      "damaged. Delete the line (or the file) and resume again") from None
            if not isinstance(record, dict):
                raise CheckpointError(f"{self.metrics_file}: line {number} is not a JSON object")
            records.append(record)
        return records

    def truncate_metrics(self, epoch: int) -> None:
        """Drop records logged after ``epoch`` (a resumed run re-does them)."""
        kept = [r for r in self.read_metrics() if _epoch_of(r) <= epoch]
        atomic_write_text(self.metrics_file, "".join(json.dumps(r) + "\n" for r in kept))

    def save_state(self, state: dict[str, Any]) -> Path:
        with atomic_path(self.state_file) as tmp:
            torch.save(state, tmp)
        return self.state_file

    def load_state(self) -> dict[str, Any]:
        """The checkpoint, unpickled with ``weights_only=True``: tensors, numbers, strings and containers only,
        so a planted ``state.pt`` cannot run code; anything unreadable is a ``CheckpointError``."""
        if not self.state_file.is_file():
            raise CheckpointError(f"--resume: no checkpoint {self.state_file}; start without --resume or point "
                                  "--out at the run directory to continue")
        try:
            state = torch.load(self.state_file, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch.load raises a zoo (UnpicklingError, RuntimeError, EOFError, zip errors)
            first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
            raise CheckpointError(f"checkpoint {self.state_file} cannot be read safely ({type(exc).__name__}: "
                                  f"{first}); it is damaged, foreign or from an older condex. Delete it (or use "
                                  "a new --out) to restart") from None
        if not isinstance(state, dict) or "epoch" not in state or "config" not in state:
            raise CheckpointError(f"checkpoint {self.state_file} is not a condex distillation state; delete it "
                                  "(or use a new --out) to restart")
        return state

    @property
    def run_file(self) -> Path:
        return self.path / RUN_FILE

    def write_run(self, values: dict[str, Any]) -> Path:
        return atomic_write_text(self.run_file, json.dumps(values, indent=2) + "\n")

    def read_run(self) -> dict[str, Any]:
        return read_run_file(self.path)

    def write_json(self, name: str, values: dict[str, Any]) -> Path:
        return atomic_write_text(self.path / name, json.dumps(values, indent=2) + "\n")


def read_run_file(directory: str | Path) -> dict[str, Any]:
    """What a run was started with (``run.json``); ``CheckpointError`` if it is missing or damaged."""
    path = Path(directory) / RUN_FILE
    if not path.is_file():
        raise CheckpointError(f"--resume: {path} is missing (no run there, or one started by an older condex); "
                              "check --out, or pass --teacher, --condensed and the original settings again")
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc}); pass --teacher, --condensed and the original "
                              "settings again") from None
    if not isinstance(values, dict) or not isinstance(values.get("provenance", {}), dict) \
            or not isinstance(values.get("distill", {}), dict):
        raise CheckpointError(f"{path} must hold a JSON object with 'provenance' and 'distill' objects")
    return values


def fill_resume_arguments(args: Any) -> None:
    """``condex distill --out RUN --resume`` needs nothing else: a missing --teacher, --condensed, --data-root
    and --seed, and every distill setting, come from ``RUN/run.json``. What the command line gives wins
    (``--set``/flags may change budgets; other changes are refused when the state is loaded)."""
    if not getattr(args, "out", None):
        raise CheckpointError("--resume needs --out, the run directory to continue")
    values = read_run_file(args.out)
    provenance = values.get("provenance", {})
    for attr, key in (("teacher", "teacher_checkpoint"), ("condensed", "condensed"), ("data_root", "data_root")):
        if hasattr(args, attr) and getattr(args, attr) is None and provenance.get(key):
            setattr(args, attr, str(provenance[key]))
    if getattr(args, "seed", None) is None and isinstance(values.get("seed"), int):
        args.seed = values["seed"]
    saved = [f"distill.{k}={v}" for k, v in values.get("distill", {}).items()
             if isinstance(v, bool | int | float | str)]
    args.set = saved + list(getattr(args, "set", []) or [])  # later entries win: the command line's


def _epoch_of(record: dict[str, Any]) -> int:
    value = record.get("epoch", 0)
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0


def tensors_sha256(*tensors: torch.Tensor) -> str:
    """Content hash of tensors (dtype, shape and bytes): identifies the condensed set a run was started with."""
    digest = hashlib.sha256()
    for tensor in tensors:
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{t.dtype}{tuple(t.shape)}".encode())
        digest.update(t.numpy().tobytes())
    return digest.hexdigest()


class PhaseTimer:
    """Wall time per phase (synthesis, kd, eval, checkpoint, ...), cumulative over a (resumed) run."""

    def __init__(self, totals: dict[str, float] | None = None) -> None:
        self.totals: dict[str, float] = defaultdict(float, totals or {})

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.totals[name] += time.perf_counter() - start

    def total(self, *names: str) -> float:
        return sum(self.totals[n] for n in names)


class ComputeProfiler:
    """Time spent inside model forward passes (hooks on the given top-level modules) and ``backward()``,
    counted only inside ``counting()`` blocks (the budgeted synthesis and KD phases, so evaluation forwards
    do not inflate it). ``seconds`` may be seeded from a checkpoint, so a resumed run keeps its total.

    On CPU, kernels run synchronously, so wall time between a module's pre-hook and hook is its forward
    cost. Forward passes nested inside another timed forward are counted once."""

    def __init__(self, modules: dict[str, nn.Module], synchronize: bool = False,
                 seconds: dict[str, float] | None = None) -> None:
        self.seconds: dict[str, float] = defaultdict(float, seconds or {})
        self.enabled = False
        self._depth = 0
        self._start = 0.0
        self._sync = synchronize
        self._handles = []
        # Closures, not bound methods: deepcopy (e.g. Fast's generator clone) shares functions but would
        # copy a bound method's profiler, losing the clone's forward time.
        def pre(*_: Any) -> None:
            self._pre()

        def post(*_: Any) -> None:
            self._post()

        for module in modules.values():
            self._handles.append(module.register_forward_pre_hook(pre))
            self._handles.append(module.register_forward_hook(post))

    def _now(self) -> float:
        if self._sync:
            torch.cuda.synchronize()
        return time.perf_counter()

    def _pre(self) -> None:
        if self._depth == 0:
            self._start = self._now()
        self._depth += 1

    def _post(self) -> None:
        self._depth -= 1
        if self._depth == 0 and self.enabled:
            self.seconds["forward"] += self._now() - self._start

    @contextmanager
    def counting(self) -> Iterator[None]:
        """Count forward/backward time inside this block only."""
        self.enabled = True
        try:
            yield
        finally:
            self.enabled = False

    @contextmanager
    def backward(self) -> Iterator[None]:
        start = self._now()
        try:
            yield
        finally:
            if self.enabled:
                self.seconds["backward"] += self._now() - start

    @property
    def compute_seconds(self) -> float:
        return self.seconds["forward"] + self.seconds["backward"]

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


_active_profilers: list[ComputeProfiler] = []


@contextmanager
def profiling(profiler: ComputeProfiler) -> Iterator[ComputeProfiler]:
    """Make ``profiler`` the one ``backward()`` reports to while the block runs."""
    _active_profilers.append(profiler)
    try:
        yield profiler
    finally:
        _active_profilers.remove(profiler)


def backward(loss: torch.Tensor) -> None:
    """``loss.backward()``, timed by the active ComputeProfiler (if any)."""
    if _active_profilers:
        with _active_profilers[-1].backward():
            loss.backward()
    else:
        loss.backward()


def peak_memory_mb() -> float:
    """Peak resident memory of this process so far (Linux ru_maxrss is in KiB); CUDA peak when on GPU."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    if torch.cuda.is_available():
        peak += torch.cuda.max_memory_allocated() / 2**20
    return peak
