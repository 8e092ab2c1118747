"""Run management for distillation: run directory, JSONL metrics, resumable checkpoints, RNG state,
wall-time accounting per phase, forward/backward profiling and PNG grids.

Layout of a run directory::

    run/metrics.jsonl     one JSON object per logged event (epoch losses, evaluations)
    run/state.pt          latest resumable checkpoint (models, optimisers, pool, RNG, counters)
    run/grids/*.png       synthetic vs condensed sample grids
    run/student/          the final student (safetensors + card, ``shared.checkpoint``)
    run/summary.json      final accuracy, timings, profile
"""

from __future__ import annotations

import json
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
from shared.io import atomic_path, atomic_write_text

STATE_FILE = "state.pt"
METRICS_FILE = "metrics.jsonl"


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class RunDir:
    """Paths and files of one run; metrics are appended as JSON lines."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)

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
        if not self.metrics_file.is_file():
            return []
        return [json.loads(line) for line in self.metrics_file.read_text(encoding="utf-8").splitlines() if line]

    def truncate_metrics(self, epoch: int) -> None:
        """Drop records logged after ``epoch`` (a resumed run re-does them)."""
        kept = [r for r in self.read_metrics() if int(r.get("epoch", 0)) <= epoch]
        atomic_write_text(self.metrics_file, "".join(json.dumps(r) + "\n" for r in kept))

    def save_state(self, state: dict[str, Any]) -> Path:
        with atomic_path(self.state_file) as tmp:
            torch.save(state, tmp)
        return self.state_file

    def load_state(self) -> dict[str, Any]:
        if not self.state_file.is_file():
            raise CheckpointError(f"--resume: no checkpoint {self.state_file}; start without --resume or point "
                                  "--out at the run directory to continue")
        try:
            return torch.load(self.state_file, map_location="cpu", weights_only=False)
        except (RuntimeError, OSError, EOFError) as exc:
            raise CheckpointError(f"checkpoint {self.state_file} cannot be read ({exc}); "
                                  "delete it to restart") from None

    def write_json(self, name: str, values: dict[str, Any]) -> Path:
        return atomic_write_text(self.path / name, json.dumps(values, indent=2) + "\n")


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
