"""The run's plots: one PNG (``plots/run.png``) drawn from ``metrics.jsonl`` while a distillation runs.

Panels: student test accuracy and KD loss against training seconds, and, per synthesis, what the inversion
makes: teacher agreement with the requested classes and its confidence, pseudo-label entropy and classes
present, the raw BN-statistics loss, and precision / recall / coverage of the condensed set's teacher
features by the synthetic ones. A panel whose metric the run does not log (e.g. ``cs-only`` synthesises
nothing) says so instead of staying blank."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from shared.io import atomic_path

PANELS: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("student test accuracy", ("accuracy",), "eval"),
    ("KD loss", ("kd_loss",), "epoch"),
    ("teacher on synthetic batches", ("agreement", "confidence"), "epoch"),
    ("pseudo-labels", ("label_entropy", "classes_present_share"), "epoch"),
    ("BN-statistics loss (unweighted)", ("bn_raw",), "epoch"),
    ("synthetic vs condensed features", ("precision", "recall", "coverage"), "epoch"),
)


def _series(records: Sequence[dict[str, Any]], event: str, key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for record in records:
        if record.get("event") != event or "seconds" not in record:
            continue
        value = record.get(key)
        if key == "classes_present_share" and "classes_present" in record and "label_histogram" in record:
            value = record["classes_present"] / max(1, len(record["label_histogram"]))
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            xs.append(float(record["seconds"]))
            ys.append(float(value))
    return xs, ys


def plot_run(records: Sequence[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """Draw the six panels of ``records`` (metrics.jsonl lines) into ``path`` (PNG, written atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(13, 6.5), constrained_layout=True)
    for ax, (name, keys, event) in zip(axes.flat, PANELS, strict=True):
        drawn = False
        for key in keys:
            xs, ys = _series(records, event, key)
            if xs:
                ax.plot(xs, ys, label=key.replace("_share", " / classes"), marker="." if len(xs) < 30 else None)
                drawn = True
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("training seconds")
        if not drawn:
            ax.text(0.5, 0.5, "not logged by this run", ha="center", va="center", transform=ax.transAxes)
        elif len(keys) > 1:
            ax.legend(fontsize=8)
        if keys == ("bn_raw",) and drawn:
            ax.set_yscale("log")
    if title:
        fig.suptitle(title)
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
    return path
