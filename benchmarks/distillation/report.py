"""Write the distillation benchmark results: JSON (the record of truth), Markdown tables, PNG plots.

Records are per job (case, condensed set, seed). ``summarize`` adds, per (condensed set, case), the final
accuracy's mean +- sample std over seeds, the seconds to reach 60/70/80% (``stats`` rule: first evaluation
at or above the threshold; mean over the seeds that reach it, and how many did) and the accuracy curve as a
mean +- std band on aligned times; the two ceilings (``full``, ``full-kd``: no condensed set); and the
targets on those means, per condensed set:

* ``gain_target_met``: mi* >= best of cs-only/mi/mi+cs + 2 points (means);
* ``full_data_target_met``: mi* within 3 points of the full-data student; ``within_2_of_full_data_met``:
  mi* >= full-data student - 2 points;
* ``fast_speed``: data-free fast mi >= 70% within 60 s (the seeds' mean accuracy at 60 s of training, each curve
  interpolated there) and >= 80% at the budget (mean final accuracy);
* the issue-6 ``breadth_targets`` on the primary set (``breadth.breadth_targets``, also on means)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.distillation.breadth import breadth_targets
from benchmarks.distillation.plan import CEILINGS, DEFAULT_SET, with_legacy_defaults
from benchmarks.distillation.stats import (
    aggregate,
    band,
    curve_of,
    mean_at,
    mean_of,
    threshold_key,
    times_to_accuracy,
)
from shared.io import atomic_path, atomic_write_text

Record = dict[str, Any]
MEAN_KEYS = ("seconds", "synthesis_seconds", "kd_seconds", "other_seconds", "epochs", "pool_samples_at_end",
             "synthetic_samples_seen", "forward_backward_fraction", "peak_memory_mb", "best_accuracy")
DERIVED = ("records", "cases", "ceilings", "targets", "breadth_targets", "full_data_student_accuracy",
           "full_kd_student_accuracy", "forward_backward_fraction", "forward_backward_fraction_all_runs")
SPEED_SECONDS, SPEED_ACCURACY, BUDGET_ACCURACY = 60.0, 0.70, 0.80


def is_ceiling(record: Record) -> bool:
    return record.get("case") in CEILINGS or record.get("mode") in ("full-data", "full-kd")


def distill_records(records: list[Record]) -> list[Record]:
    """The distillation runs (not the ceilings)."""
    return [r for r in records if not is_ceiling(r)]


def is_variant(record: Record) -> bool:
    """A breadth or IPC-1 variant (``BASE:MODE@option=...``) of a core case, kept out of the core targets."""
    return "@" in record.get("case", "")


def is_core(record: Record) -> bool:
    """One of issue 4's distillation cases (cs-only, or fast / generative-deepinversion without options)."""
    core_bases = ("none", "fast", "generative-deepinversion")
    return not is_variant(record) and not is_ceiling(record) and record["base"] in core_bases


def _forward_backward(runs: list[Record]) -> float | None:
    """Share of the runs' training time in model forward/backward, weighted by each run's time."""
    runs = [r for r in runs if r.get("forward_backward_fraction") is not None]
    seconds = sum(r["seconds"] for r in runs)
    return sum(r["forward_backward_fraction"] * r["seconds"] for r in runs) / seconds if seconds else None


def group(records: list[Record]) -> dict[tuple[str | None, str], list[Record]]:
    """Records by (condensed set, case), in order of first appearance."""
    groups: dict[tuple[str | None, str], list[Record]] = {}
    for r in records:
        groups.setdefault((r.get("condensed"), r.get("case", f"{r['base']}:{r['mode']}")), []).append(r)
    return groups


def case_summary(runs: list[Record]) -> dict[str, Any]:
    """One (condensed set, case) over its seeds: accuracy mean/std, time to 60/70/80%, band, mean figures."""
    curves = [curve_of(r) for r in runs]
    first = runs[0]
    out: dict[str, Any] = {
        "case": first.get("case", f"{first['base']}:{first['mode']}"), "condensed": first.get("condensed"),
        "base": first["base"], "mode": first["mode"], "seeds": sorted(int(r.get("seed", 0)) for r in runs),
        "accuracy": aggregate([r["student_accuracy"] for r in runs if r.get("student_accuracy") is not None]),
        "time_to_accuracy": times_to_accuracy(curves), "band": band(curves),
        "accuracy_at_60s": mean_at(curves, SPEED_SECONDS),
    }
    out |= {k: v for k in MEAN_KEYS if (v := mean_of(runs, k)) is not None}
    if first["mode"] == "full-data":
        out |= {"converged_seeds": sum(bool(r.get("converged")) for r in runs), "max_epochs": first.get("max_epochs")}
    return out


def _mean_accuracy(summary: dict[str, Any] | None) -> float | None:
    return None if summary is None else summary["accuracy"]["mean"]


def summarize(header: dict[str, Any], records: list[Record]) -> dict[str, Any]:
    """Header + derived summaries (per case, ceilings, forward/backward share, targets) + the records
    (a record without ``seed`` / ``condensed`` is seed 0 on the header's primary set)."""
    primary = header.get("primary_set") or DEFAULT_SET
    records = [with_legacy_defaults(r, primary) for r in records]
    summaries = [case_summary(runs) for runs in group(records).values()]
    ceilings = {s["case"]: s for s in summaries if is_ceiling(s)}
    cases = [s for s in summaries if not is_ceiling(s)]
    runs = distill_records(records)
    out = dict(header) | {
        "full_data_student_accuracy": _mean_accuracy(ceilings.get("full")),
        "full_kd_student_accuracy": _mean_accuracy(ceilings.get("full-kd")),
        "forward_backward_fraction": _forward_backward([r for r in runs if is_core(r)]),
        "forward_backward_fraction_all_runs": _forward_backward(runs),
        "cases": cases, "ceilings": ceilings, "records": records}
    sets = list(dict.fromkeys(s["condensed"] for s in cases))
    targets = {name: _targets([s for s in cases if s["condensed"] == name and not is_variant(s)], ceilings)
               for name in sets}
    out["targets"] = {name: t for name, t in targets.items() if t}
    out["breadth_targets"] = breadth_targets([r for r in runs if r["condensed"] == primary])
    return out


def _base_target(base: str, by_case: dict[str, dict[str, Any]], ceilings: dict[str, dict[str, Any]]
                 ) -> dict[str, Any] | None:
    star = _mean_accuracy(by_case.get(f"{base}:mi*"))
    if star is None:
        return None
    entry: dict[str, Any] = {"mi*": star, "mi*_std": by_case[f"{base}:mi*"]["accuracy"]["std"],
                             "seeds": by_case[f"{base}:mi*"]["accuracy"]["n"]}
    others = {name: a for name in ("none:cs-only", f"{base}:mi", f"{base}:mi+cs")
              if (a := _mean_accuracy(by_case.get(name))) is not None}
    if others:
        best = max(others, key=lambda name: others[name])
        gain = 100 * (star - others[best])
        entry |= {"best_other": others[best], "best_other_case": best, "gain_over_best_other_points": gain,
                  "gain_target_met": gain >= 2.0}
    full, full_kd = _mean_accuracy(ceilings.get("full")), _mean_accuracy(ceilings.get("full-kd"))
    if full is not None:
        gap = 100 * (full - star)
        entry |= {"gap_to_full_data_points": gap, "full_data_target_met": gap <= 3.0,
                  "within_2_of_full_data_met": gap <= 2.0}
    if full_kd is not None:
        entry["gap_to_full_kd_points"] = 100 * (full_kd - star)
    return entry


def speed_target(summary: dict[str, Any]) -> dict[str, Any]:
    """Data-free fast mi >= 70% within 60 s (mean accuracy at 60 s) and >= 80% at the budget (mean final)."""
    at_60, final = summary.get("accuracy_at_60s"), summary["accuracy"]["mean"]
    reach = summary["time_to_accuracy"][threshold_key(SPEED_ACCURACY)]
    within = at_60 is not None and at_60 >= SPEED_ACCURACY
    at_budget = final is not None and final >= BUDGET_ACCURACY
    return {"case": summary["case"], "accuracy_at_60s": at_60, "seconds_to_70_mean": reach["mean_seconds"],
            "seeds_reaching_70": reach["reached"], "seeds": reach["seeds"], "within_60s_met": within,
            "accuracy_at_budget": final, "at_budget_met": at_budget, "met": within and at_budget}


def _targets(summaries: list[dict[str, Any]], ceilings: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The per-base targets and ``fast_speed`` on one condensed set's non-variant case summaries."""
    by_case = {s["case"]: s for s in summaries}
    targets: dict[str, Any] = {}
    for base in sorted({s["base"] for s in summaries if s["base"] != "none"}):
        entry = _base_target(base, by_case, ceilings)
        if entry is not None:
            targets[base] = entry
    if _mean_accuracy(by_case.get("fast:mi")) is not None:  # issue 10: the data-free loop's speed
        targets["fast_speed"] = speed_target(by_case["fast:mi"])
    return targets


def write_json(path: Path, results: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(results, indent=2) + "\n")


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def _fmt(value: Any) -> str:
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def _num(x: float | None, digits: int = 0) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _mean_std(agg: dict[str, Any]) -> str:
    if agg["mean"] is None:
        return "-"
    return _pct(agg["mean"]) + ("" if agg["std"] is None else f" ± {100 * agg['std']:.2f}")


def _tta(entry: dict[str, Any]) -> str:
    counts = f"({entry['reached']}/{entry['seeds']})"
    return f"not reached {counts}" if entry["mean_seconds"] is None else f"{entry['mean_seconds']:.0f} s {counts}"


def _verdict(met: bool | None) -> str:
    return "-" if met is None else ("met" if met else "**missed**")


def condensed_sets(results: dict[str, Any]) -> dict[str, Any]:
    """The header's condensed sets (a results file from before several sets: its one set as the default)."""
    if "condensed_sets" in results:
        return results["condensed_sets"]
    return {DEFAULT_SET: results["condensed"]} if "condensed" in results else {}


def _header_lines(results: dict[str, Any]) -> list[str]:
    lines = [
        "# Distillation benchmark (FMNIST-CPU)", "",
        f"- date (of the last command): {results['date']}", f"- machine: {results['machine']}",
        "- command(s), in order (later ones with --resume keep earlier runs): "
        + "; ".join(f"`{c}`" for c in results.get("commands", [results["command"]])),
        f"- teacher: {results['teacher']['arch']} ({_pct(results['teacher']['accuracy'])}% test accuracy)",
        f"- student: {results['student_arch']}; seeds per case: {results.get('seeds', 1)} (mean ± sample std "
        "over seeds; time to accuracy: first evaluation at or above it, mean over the seeds that reach it "
        "(reached/seeds))",
        f"- budget: {results['budget_seconds']:.0f} s of training wall time (synthesis + KD) per run unless the "
        f"case says x2; {results['threads']} torch thread(s) per run, {results.get('workers', 1)} run(s) at a time",
    ]
    lines += [f"- condensed set `{name}`: {info['description']}" for name, info in condensed_sets(results).items()]
    share, share_all = results["forward_backward_fraction"], results.get("forward_backward_fraction_all_runs")
    lines.append(f"- share of distillation time in model forward/backward: {_pct(share)}% (core cases; all runs "
                 f"{_pct(share_all)}%)")
    return lines


CASE_COLUMNS = ("| case | seeds | student acc. (%) | to 60% | to 70% | to 80% | train s | synthesis s | KD s | "
                "other s | epochs | pool | fwd/bwd share | peak MB |", "|---" * 14 + "|")


def _case_row(s: dict[str, Any]) -> str:
    fb, tta = s.get("forward_backward_fraction"), s["time_to_accuracy"]
    return (f"| {s['case']} | {len(s['seeds'])} | {_mean_std(s['accuracy'])} | "
            + " | ".join(_tta(tta[k]) for k in ("60", "70", "80"))
            + f" | {_num(s.get('seconds'))} | {_num(s.get('synthesis_seconds'))} | {_num(s.get('kd_seconds'))} | "
            f"{_num(s.get('other_seconds'))} | {_num(s.get('epochs'))} | {_num(s.get('pool_samples_at_end'))} | "
            f"{'-' if fb is None else f'{100 * fb:.0f}%'} | {_num(s.get('peak_memory_mb'))} |")


def _case_tables(results: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    for name in dict.fromkeys(s["condensed"] for s in results["cases"]):
        lines += ["", f"## Condensed set `{name}`", "", *CASE_COLUMNS]
        lines += [_case_row(s) for s in results["cases"] if s["condensed"] == name]
    if results["ceilings"]:
        lines += ["", "## Ceilings (no condensed set)", "", *CASE_COLUMNS]
        lines += [_case_row(s) for s in results["ceilings"].values()]
    full = results["ceilings"].get("full")
    if full:
        lines += ["", _full_note(full)]
    return lines


def _full_note(full: dict[str, Any]) -> str:
    rule = (f"`full`: labels on all real training images, cosine learning rate over at most {full.get('max_epochs')} "
            "epochs, stopped once 2 epochs did not raise the best test accuracy by 0.1 point")
    if full.get("max_epochs") is None:  # a record from before the convergence rule: fixed epochs
        rule = "`full`: labels on all real training images, a fixed number of epochs"
    return (f"{rule}: {_num(full.get('epochs'), 1)} epochs used on average"
            + ("" if full.get("max_epochs") is None else
               f" ({full.get('converged_seeds', 0)}/{len(full['seeds'])} seeds stopped by the rule, the rest at "
               f"the cap; best epoch {_pct(full.get('best_accuracy'))}% on average)")
            + ". `full-kd`: KD from the teacher (logits at distill.temperature, distill.kd_augment) on all real "
            "training images for the same budget as the distillation cases.")


def _base_target_lines(name: str, base: str, t: dict[str, Any]) -> list[str]:
    star = f"{_pct(t['mi*'])}" + ("" if t.get("mi*_std") is None else f" ± {100 * t['mi*_std']:.2f}")
    lines = []
    if "best_other" in t:
        lines.append(f"- `{name}` {base}: mi* >= best of cs-only/mi/mi+cs + 2 (means): mi* {star} vs "
                     f"{t['best_other_case']} {_pct(t['best_other'])}: {t['gain_over_best_other_points']:+.2f} points "
                     f"({_verdict(t['gain_target_met'])})")
    if "gap_to_full_data_points" in t:
        gap = t["gap_to_full_data_points"]
        lines.append(f"- `{name}` {base}: mi* within 3 points of full data: gap {gap:.2f} points "
                     f"({_verdict(t['full_data_target_met'])}); mi* >= full-data student - 2: "
                     f"{_verdict(t['within_2_of_full_data_met'])}"
                     + ("" if "gap_to_full_kd_points" not in t else
                        f"; gap to full-data KD {t['gap_to_full_kd_points']:.2f} points"))
    return lines


def _target_lines(results: dict[str, Any]) -> list[str]:
    lines = ["", "## Targets (on means over seeds)", "",
             f"- ceilings: full-data student {_pct(results['full_data_student_accuracy'])}%, full-data KD "
             f"{_pct(results.get('full_kd_student_accuracy'))}%"]
    for name, targets in results["targets"].items():
        for base, t in targets.items():
            if base == "fast_speed":
                lines.append(f"- `{name}` fast mi >= 70% within 60 s and >= 80% at the budget ({t['case']}): mean "
                             f"{_pct(t['accuracy_at_60s'])}% at 60 s (70% first reached at "
                             f"{_num(t['seconds_to_70_mean'])} s, {t['seeds_reaching_70']}/{t['seeds']} seeds), "
                             f"{_pct(t['accuracy_at_budget'])}% at the budget ({_verdict(t['met'])})")
            else:
                lines += _base_target_lines(name, base, t)
    for name, t in results.get("breadth_targets", {}).items():
        lines.append(f"- breadth {name} (means): " + ", ".join(f"{k} {_fmt(v)}" for k, v in t.items()))
    return lines


def _runs_table(results: dict[str, Any]) -> list[str]:
    lines = ["", "## Runs", "", "| condensed set | case | seed | student acc. (%) | train s | epochs |",
             "|---|---|---|---|---|---|"]
    for r in results["records"]:
        lines.append(f"| {r.get('condensed') or '-'} | {r.get('case')} | {r.get('seed', 0)} | "
                     f"{_pct(r.get('student_accuracy'))} | {r['seconds']:.0f} | {r['epochs']} |")
    return lines


def write_markdown(path: Path, results: dict[str, Any]) -> None:
    lines = _header_lines(results) + _case_tables(results) + _target_lines(results) + _runs_table(results)
    atomic_write_text(path, "\n".join(lines) + "\n")


def _bands(ax: Any, summaries: list[dict[str, Any]], ceilings: dict[str, dict[str, Any]]) -> None:
    for s in summaries + ([ceilings["full-kd"]] if "full-kd" in ceilings else []):
        if not s["band"]:
            continue
        t = np.array([p["seconds"] for p in s["band"]])
        mean, std = np.array([100 * p["mean"] for p in s["band"]]), np.array([100 * p["std"] for p in s["band"]])
        style = {"color": "k", "linestyle": ":"} if s["case"] == "full-kd" else \
            {"linestyle": "-" if s["mode"] == "mi*" else "--"}
        line = ax.plot(t, mean, label=f"{s['case']} (n={len(s['seeds'])})", **style)[0]
        ax.fill_between(t, mean - std, mean + std, color=line.get_color(), alpha=0.15, linewidth=0)
    full = _mean_accuracy(ceilings.get("full"))
    if full is not None:
        ax.axhline(100 * full, color="k", linewidth=0.8, label="full real data (labels)")
    ax.set_xlabel("training wall time (s)")
    ax.set_ylabel("student test accuracy (%), mean ± std over seeds")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    ax.grid(alpha=0.3)


def _time_split(bx: Any, summaries: list[dict[str, Any]]) -> None:
    names = [s["case"].replace("@", "\n@") for s in summaries]
    syn = [s.get("synthesis_seconds", 0.0) for s in summaries]
    kd = [s.get("kd_seconds", 0.0) for s in summaries]
    other = [s.get("other_seconds", 0.0) for s in summaries]
    bx.bar(names, syn, label="synthesis")
    bx.bar(names, kd, bottom=syn, label="KD")
    bx.bar(names, other, bottom=[a + b for a, b in zip(syn, kd, strict=True)], label="other (eval, ckpt)")
    bx.set_ylabel("seconds (mean over seeds)")
    bx.tick_params(axis="x", labelsize=6, rotation=30)
    bx.legend(fontsize=7)


def plot_rows(cases: list[dict[str, Any]]) -> list[tuple[str, list[dict[str, Any]]]]:
    """Per condensed set: its core cases, then (if any) the others (breadth or IPC-1 cases)."""
    rows = []
    for name in dict.fromkeys(s["condensed"] for s in cases):
        in_set = [s for s in cases if s["condensed"] == name]
        core, others = [s for s in in_set if is_core(s)], [s for s in in_set if not is_core(s)]
        rows += [(f"{name}: core cases", core)] if core else []
        rows += [(f"{name}: breadth / IPC-1 cases", others)] if others else []
    return rows


def write_png(path: Path, results: dict[str, Any]) -> None:
    """Per row (a condensed set's core cases, its variants): accuracy bands vs training time, time split."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = plot_rows(results["cases"]) or [("ceilings", [])]
    fig, axes = plt.subplots(len(rows), 2, figsize=(14, 5 * len(rows)), squeeze=False)
    for (ax, bx), (title, summaries) in zip(axes, rows, strict=True):
        _bands(ax, summaries, results["ceilings"])
        ax.set_title(title, fontsize=9)
        _time_split(bx, summaries or list(results["ceilings"].values()))
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
