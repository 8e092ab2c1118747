"""Rich progress bars for long work; silent when CONDEX_QUIET=1 or the caller asks for quiet."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


@dataclass
class ProgressHandle:
    """Advance the bar and show the latest metrics (e.g. losses) beside it."""

    _progress: Progress | None
    _task: int | None
    metrics: dict[str, float] = field(default_factory=dict)

    def advance(self, steps: float = 1.0, **metrics: float) -> None:
        self.metrics.update(metrics)
        if self._progress is not None and self._task is not None:
            text = "  ".join(f"{k}={v:.4g}" for k, v in self.metrics.items())
            self._progress.update(self._task, advance=steps, metrics=text)

    def update_total(self, total: float) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, total=total)


def quiet() -> bool:
    return os.environ.get("CONDEX_QUIET", "") not in ("", "0")


@contextmanager
def progress_bar(total: float | None, description: str, enabled: bool = True) -> Iterator[ProgressHandle]:
    if not enabled or quiet():
        yield ProgressHandle(None, None)
        return
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[metrics]}"),
        transient=False,
    )
    with progress:
        task = progress.add_task(description, total=total, metrics="")
        yield ProgressHandle(progress, task)
