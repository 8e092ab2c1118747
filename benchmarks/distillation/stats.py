"""Statistics over the seeds of a benchmark case (pure functions, no training).

* ``aggregate``: mean and sample standard deviation (n - 1 in the denominator; ``None`` for one value).
* ``band``: every seed's accuracy-vs-time curve linearly interpolated onto one grid of seconds spanning the
  range all seeds cover (latest first evaluation .. earliest last evaluation), then mean +- std per point;
  ``mean_at``: the seeds' mean accuracy at one time, each curve interpolated there.
* ``time_to_accuracy``: the rule is "first evaluation at or above": the training time of the first
  evaluation whose accuracy is >= the threshold (no interpolation between evaluations), ``None`` if no
  evaluation reaches it. ``time_to_accuracy_over_seeds`` averages it over the seeds that reach it and says
  how many did."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

Curve = list[tuple[float, float]]  # (training seconds, accuracy fraction), in time order
THRESHOLDS = (0.6, 0.7, 0.8)


def aggregate(values: Sequence[float]) -> dict[str, Any]:
    """``{"mean", "std", "n", "values"}`` (std: sample std, ``None`` below two values; mean ``None`` if empty)."""
    n = len(values)
    mean = sum(values) / n if n else None
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 and mean is not None else None
    return {"mean": mean, "std": std, "n": n, "values": list(values)}


def curve_of(record: dict[str, Any]) -> Curve:
    """A record's ``curve`` (``[{"seconds", "accuracy", ...}]``) as sorted (seconds, accuracy) pairs."""
    return sorted((float(p["seconds"]), float(p["accuracy"])) for p in record.get("curve") or [])


def band(curves: Sequence[Curve], points: int = 50) -> list[dict[str, float]]:
    """Mean +- std of the curves at aligned times: ``[{"seconds", "mean", "std", "n"}]`` (std 0 for one curve)."""
    curves = [c for c in curves if c]
    if not curves:
        return []
    lo, hi = max(c[0][0] for c in curves), min(c[-1][0] for c in curves)
    if hi < lo:
        return []
    grid = np.linspace(lo, hi, points) if hi > lo else np.array([lo])
    values = np.stack([np.interp(grid, [t for t, _ in c], [a for _, a in c]) for c in curves])
    std = values.std(axis=0, ddof=1) if len(curves) > 1 else np.zeros(len(grid))
    return [{"seconds": float(t), "mean": float(m), "std": float(s), "n": len(curves)}
            for t, m, s in zip(grid, values.mean(axis=0), std, strict=True)]


def mean_at(curves: Sequence[Curve], seconds: float) -> float | None:
    """Mean over the curves of their accuracy at ``seconds`` (linear interpolation; ``None`` unless every
    curve has evaluations on both sides of it, or at it)."""
    curves = [c for c in curves if c]
    if not curves or any(not c[0][0] <= seconds <= c[-1][0] for c in curves):
        return None
    return float(np.mean([np.interp(seconds, [t for t, _ in c], [a for _, a in c]) for c in curves]))


def time_to_accuracy(curve: Curve, threshold: float) -> float | None:
    """Seconds of the first evaluation with accuracy >= ``threshold`` (``None``: never reached)."""
    return next((t for t, a in curve if a >= threshold), None)


def time_to_accuracy_over_seeds(curves: Sequence[Curve], threshold: float) -> dict[str, Any]:
    """``{"mean_seconds", "reached", "seeds"}``: mean over the seeds that reach ``threshold`` (``None`` if none)."""
    times = [t for t in (time_to_accuracy(c, threshold) for c in curves) if t is not None]
    return {"mean_seconds": sum(times) / len(times) if times else None, "reached": len(times), "seeds": len(curves)}


def threshold_key(threshold: float) -> str:
    return f"{round(100 * threshold)}"


def times_to_accuracy(curves: Sequence[Curve], thresholds: Sequence[float] = THRESHOLDS) -> dict[str, Any]:
    """``time_to_accuracy_over_seeds`` for every threshold, keyed by its percentage ("60", "70", "80")."""
    return {threshold_key(t): time_to_accuracy_over_seeds(curves, t) for t in thresholds}


def mean_of(records: Sequence[dict[str, Any]], key: str) -> float | None:
    """Mean of ``key`` over the records that have a number there."""
    values = [float(r[key]) for r in records if isinstance(r.get(key), int | float)]
    return sum(values) / len(values) if values else None
