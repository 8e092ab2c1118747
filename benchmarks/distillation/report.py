"""Write the distillation benchmark results: JSON (the record of truth), Markdown table, PNG plots."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from benchmarks.distillation.breadth import breadth_targets
from shared.io import atomic_path, atomic_write_text

ORDER = ["cs-only", "mi", "mi+cs", "mi*"]


def distill_records(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if r["mode"] != "full-data"]


def is_variant(record: dict[str, Any]) -> bool:
    """A breadth variant (``BASE:MODE@option=...``) of a core case, kept out of the core targets."""
    return "@" in record.get("case", "")


def is_core(record: dict[str, Any]) -> bool:
    """One of issue 4's cases (cs-only, or fast / deepinversion without breadth options)."""
    return not is_variant(record) and record["base"] in ("none", "fast", "deepinversion")


def _forward_backward(runs: list[dict[str, Any]]) -> float | None:
    """Share of the runs' training time in model forward/backward, weighted by each run's time."""
    seconds = sum(r["seconds"] for r in runs)
    return sum(r["forward_backward_fraction"] * r["seconds"] for r in runs) / seconds if seconds else None


def summarize(header: dict[str, Any], records: list[dict[str, Any]]) -> dict[str, Any]:
    """Top-level results: header, full-data bound, time-weighted forward/backward share and targets."""
    full = next((r for r in records if r["mode"] == "full-data"), None)
    runs = distill_records(records)
    out = dict(header) | {"full_data_student_accuracy": full["student_accuracy"] if full else None,
                          "forward_backward_fraction": _forward_backward([r for r in runs if is_core(r)]),
                          "forward_backward_fraction_all_runs": _forward_backward(runs), "records": records}
    out["targets"] = _targets([r for r in runs if not is_variant(r)], full)
    out["breadth_targets"] = breadth_targets(records)
    return out


def _targets(runs: list[dict[str, Any]], full: dict[str, Any] | None) -> dict[str, Any]:
    targets: dict[str, Any] = {}
    cs_only = [r["student_accuracy"] for r in runs if r["mode"] == "cs-only"]
    for base in sorted({r["base"] for r in runs if r["base"] != "none"}):
        star = [r["student_accuracy"] for r in runs if r["base"] == base and r["mode"] == "mi*"]
        others = cs_only + [r["student_accuracy"] for r in runs if r["base"] == base and r["mode"] in ("mi", "mi+cs")]
        if not star:
            continue
        entry: dict[str, Any] = {"mi*": star[0]}
        if others:
            entry["best_other"] = max(others)
            entry["gain_over_best_other_points"] = 100 * (star[0] - max(others))
            entry["gain_target_met"] = entry["gain_over_best_other_points"] >= 2.0
        if full:
            entry["gap_to_full_data_points"] = 100 * (full["student_accuracy"] - star[0])
            entry["full_data_target_met"] = entry["gap_to_full_data_points"] <= 3.0
        targets[base] = entry
    return targets


def write_json(path: Path, results: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(results, indent=2) + "\n")


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def _fmt(value: Any) -> str:
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def write_markdown(path: Path, results: dict[str, Any]) -> None:
    lines = [
        "# Distillation benchmark (FMNIST-CPU)", "",
        f"- date (of the last command): {results['date']}", f"- machine: {results['machine']}",
        "- command(s), in order (later ones with --resume keep earlier cases): "
        + "; ".join(f"`{c}`" for c in results.get("commands", [results["command"]])),
        f"- teacher: {results['teacher']['arch']} ({_pct(results['teacher']['accuracy'])}% test accuracy)",
        f"- student: {results['student_arch']}; condensed set: {results['condensed']['description']}",
        f"- budget: {results['budget_seconds']:.0f} s of training wall time (synthesis + KD) per run unless the "
        f"case says x2; {results['threads']} torch thread(s) per run, {results.get('workers', 1)} run(s) at a time",
        f"- full real data (upper bound): {_pct(results['full_data_student_accuracy'])}%",
        f"- share of distillation time in model forward/backward: {_pct(results['forward_backward_fraction'])}% "
        f"(core cases; all runs {_pct(results.get('forward_backward_fraction_all_runs'))}%)",
        "", "| case | student acc. (%) | train s | synthesis s | KD s | other s | epochs | pool | "
        "fwd/bwd share | peak MB |", "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["records"]:
        fb = r.get("forward_backward_fraction")
        lines.append(
            f"| {r.get('case', r['base'] + ':' + r['mode'])} | {_pct(r['student_accuracy'])} | {r['seconds']:.0f} | "
            f"{r['synthesis_seconds']:.0f} | {r['kd_seconds']:.0f} | {r['other_seconds']:.0f} | {r['epochs']} | "
            f"{r.get('pool_samples_at_end', '-')} | {'-' if fb is None else f'{100 * fb:.0f}%'} | "
            f"{r['peak_memory_mb']:.0f} |")
    lines += ["", "## Targets", ""]
    for base, t in results["targets"].items():
        lines.append(f"- {base}: mi* {_pct(t['mi*'])}%, best of cs-only/mi/mi+cs {_pct(t.get('best_other'))}% "
                     f"(gain {t.get('gain_over_best_other_points', float('nan')):+.2f} points, target >= +2: "
                     f"{t.get('gain_target_met')}); gap to full data "
                     f"{t.get('gap_to_full_data_points', float('nan')):.2f} points (target <= 3: "
                     f"{t.get('full_data_target_met')})")
    for name, t in results.get("breadth_targets", {}).items():
        lines.append(f"- {name}: " + ", ".join(f"{k} {_fmt(v)}" for k, v in t.items()))
    atomic_write_text(path, "\n".join(lines) + "\n")


def _label(record: dict[str, Any]) -> str:
    return record.get("case", f"{record['base']}:{record['mode']}")


def _curves(ax: Any, runs: list[dict[str, Any]], full: float | None) -> None:
    for r in runs:
        if r["curve"]:
            ax.plot([p["seconds"] for p in r["curve"]], [100 * p["accuracy"] for p in r["curve"]],
                    label=_label(r), linestyle="-" if r["mode"] == "mi*" else "--")
    if full is not None:
        ax.axhline(100 * full, color="k", linewidth=0.8, label="full real data")
    ax.set_xlabel("training wall time (s)")
    ax.set_ylabel("student test accuracy (%)")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    ax.grid(alpha=0.3)


def _time_split(bx: Any, runs: list[dict[str, Any]]) -> None:
    names = [_label(r).replace("@", "\n@") for r in runs]
    syn = [r["synthesis_seconds"] for r in runs]
    kd = [r["kd_seconds"] for r in runs]
    other = [r["other_seconds"] for r in runs]
    bx.bar(names, syn, label="synthesis")
    bx.bar(names, kd, bottom=syn, label="KD")
    bx.bar(names, other, bottom=[s + k for s, k in zip(syn, kd, strict=True)], label="other (eval, ckpt)")
    bx.set_ylabel("seconds")
    bx.tick_params(axis="x", labelsize=6, rotation=30)
    bx.legend(fontsize=7)


def write_png(path: Path, results: dict[str, Any]) -> None:
    """Per row (core cases, then breadth cases if any): accuracy vs training time, and time split per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = distill_records(results["records"])
    core = [r for r in runs if is_core(r)]
    breadth = [r for r in runs if r not in core]
    rows = [core] + ([breadth] if breadth else [])
    fig, axes = plt.subplots(len(rows), 2, figsize=(14, 5 * len(rows)), squeeze=False)
    for (ax, bx), row in zip(axes, rows, strict=True):
        _curves(ax, row, results["full_data_student_accuracy"])
        _time_split(bx, row)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
