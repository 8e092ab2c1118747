"""Follow a running distillation from outside the engine: progress lines and (optionally) TensorBoard events.

``RunWatcher`` reads the run's ``metrics.jsonl`` (what ``Distiller`` appends after every epoch and evaluation)
from a daemon thread. It calls ``say`` with a progress line whenever an evaluation arrives and at least every
``every`` seconds, which is how a Flower run shows the server's distillation in ``flwr run --stream`` (the rich
progress bar needs a terminal). With ``tensorboard_dir`` it also writes every numeric field of every record as
a TensorBoard scalar (``epoch/kd_loss``, ``eval/accuracy``, ...) against the record's training seconds;
``torch.utils.tensorboard`` is imported only then (the ``tensorboard`` extra)::

    with RunWatcher(run_dir / "metrics.jsonl", say=print, tensorboard_dir=run_dir / "tensorboard"):
        distiller.fit()
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

from shared.errors import ConfigError

TENSORBOARD_HINT = "pip install 'condex[tensorboard]' (or set tensorboard=false)"


def check_tensorboard(enabled: bool) -> None:
    """With ``tensorboard=true``, fail before any work if the package is missing (``find_spec`` imports nothing)."""
    import importlib.util

    if enabled and importlib.util.find_spec("tensorboard") is None:
        raise ConfigError(f"tensorboard=true but the tensorboard package is not installed; {TENSORBOARD_HINT}")


def tensorboard_writer(directory: Path) -> Any:
    """A ``SummaryWriter`` into ``directory``; a ``ConfigError`` naming the extra when tensorboard is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        raise ConfigError(f"tensorboard=true needs the tensorboard package ({exc}); {TENSORBOARD_HINT}") from None
    return SummaryWriter(log_dir=str(directory))


def progress_line(epoch: dict[str, Any] | None, evaluation: dict[str, Any] | None, waited: float) -> str:
    """``distilling: 125s of training, epoch 40, kd_loss 0.8123, pool 10240; accuracy 61.20% at 120s``."""
    if epoch is None:
        return f"distilling: starting ({waited:.0f}s, no epoch finished yet)"
    parts = [f"distilling: {float(epoch.get('seconds', 0.0)):.0f}s of training, epoch {epoch.get('epoch')}"]
    parts += [f"{key} {epoch[key]:.4g}" for key in ("kd_loss", "g_loss", "pool") if _number(epoch.get(key))]
    text = ", ".join(parts)
    if evaluation is not None and _number(evaluation.get("accuracy")):
        text += f"; accuracy {100 * evaluation['accuracy']:.2f}% at {float(evaluation.get('seconds', 0.0)):.0f}s"
    return text


class RunWatcher:
    """Tails ``metrics_file`` from a thread (see the module docstring); a context manager."""

    def __init__(self, metrics_file: str | Path, say: Callable[[str], None], every: float = 20.0,
                 tensorboard_dir: str | Path | None = None, poll: float = 1.0) -> None:
        self.path, self.say, self.every, self.poll = Path(metrics_file), say, every, poll
        self.writer = tensorboard_writer(Path(tensorboard_dir)) if tensorboard_dir is not None else None
        self.last_epoch: dict[str, Any] | None = None
        self.last_eval: dict[str, Any] | None = None
        self.records = 0
        self._offset = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="condex-run-watcher", daemon=True)

    def __enter__(self) -> RunWatcher:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 trace: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.read_new()  # what the last epoch and the final evaluation wrote
        if kind is None and self.last_epoch is not None:
            self.say(progress_line(self.last_epoch, self.last_eval, 0.0) + " (finished)")
        if self.writer is not None:
            self.writer.close()

    def _run(self) -> None:
        start = last = time.monotonic()
        while not self._stop.wait(self.poll):
            evaluated = self.read_new()
            now = time.monotonic()
            if evaluated or now - last >= self.every:
                self.say(progress_line(self.last_epoch, self.last_eval, now - start))
                last = now

    def read_new(self) -> bool:
        """Consume the complete lines appended since the last call; True if an evaluation was among them."""
        if not self.path.is_file():
            return False
        with self.path.open("rb") as handle:
            if self.path.stat().st_size < self._offset:  # the file was restarted (a fresh run, --resume truncated)
                self._offset = 0
            handle.seek(self._offset)
            chunk = handle.read()
        complete = chunk[: chunk.rfind(b"\n") + 1]
        self._offset += len(complete)
        evaluated = False
        for line in complete.decode("utf-8", errors="replace").splitlines():
            evaluated |= self._take(line)
        return evaluated

    def _take(self, line: str) -> bool:
        try:
            record = json.loads(line)
        except ValueError:
            return False
        if not isinstance(record, dict):
            return False
        self.records += 1
        event = str(record.get("event", "epoch"))
        if event == "epoch":
            self.last_epoch = record
        elif event == "eval":
            self.last_eval = record
        self._scalars(event, record)
        return event == "eval"

    def _scalars(self, event: str, record: dict[str, Any]) -> None:
        if self.writer is None:
            return
        step = float(record.get("seconds", 0.0))
        for key, value in record.items():
            if key not in ("event", "seconds") and _number(value):
                self.writer.add_scalar(f"{event}/{key}", float(value), global_step=round(step))


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
