"""The engine-breadth cases of the distillation benchmark (issue 6), on the same FMNIST-CPU setting, teacher,
condensed set and per-case budget as the core cases:

* ``cmi`` in modes ``mi``, ``mi+cs``, ``mi*`` (its ``cs-only`` is the core ``none:cs-only`` record: that mode
  synthesises nothing, so it does not depend on the base method);
* ``replay=generative`` with ``fast`` in ``mi`` and ``mi*``, at the budget and at twice the budget (the
  constant-memory target compares the two peak memories);
* ``sampler=ssd`` on ``fast`` ``mi*`` with ``pool_cap`` = 1/4 of the synthetic samples the core uniform
  ``fast:mi*`` run saw, plus the uniform sampler at that same cap (separates "fewer samples" from "SSD");
* ``kd_loss=kl_logit_std`` on ``fast`` ``mi*`` (base temperature 2 for z-scored logits).

Every case runs ``benchmarks/distillation/cases.py`` in its own process (so its peak memory is its own) and
its record carries ``case``, ``replay``, ``sampling``, ``kd_loss``, ``pool_samples_at_end`` and
``peak_memory_mb``. The core runner calls ``run_breadth_cases`` after its own cases; ``breadth_targets``
evaluates the issue's targets from the records."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CORE_FAST_STAR = "fast:mi*"  # the core case whose synthetic-sample count sizes the SSD pool


@dataclass(frozen=True)
class BreadthCase:
    name: str  # unique record key, e.g. "fast:mi*@replay=generative"
    base: str
    mode: str
    overrides: dict[str, str] = field(default_factory=dict)  # distill.key -> value
    budget_factor: float = 1.0  # times the benchmark's per-case budget
    quarter_pool: bool = False  # pool_cap = 1/4 of the synthetic samples seen by the core fast:mi* run


def breadth_cases() -> list[BreadthCase]:
    """The issue-6 cases, in the order they run."""
    generative = {"distill.replay": "generative"}
    cases = [BreadthCase(f"cmi:{mode}", "cmi", mode) for mode in ("mi", "mi+cs", "mi*")]
    for factor in (1.0, 2.0):
        suffix = "" if factor == 1.0 else ",budget=x2"
        cases += [BreadthCase(f"fast:{mode}@replay=generative{suffix}", "fast", mode, generative, factor)
                  for mode in ("mi", "mi*")]
    cases += [
        BreadthCase("fast:mi*@sampler=ssd,cap=1/4", "fast", "mi*", {"distill.sampler": "ssd"}, quarter_pool=True),
        BreadthCase("fast:mi*@sampler=uniform,cap=1/4", "fast", "mi*", {}, quarter_pool=True),
        BreadthCase("fast:mi*@kd_loss=kl_logit_std", "fast", "mi*",
                    {"distill.kd_loss": "kl_logit_std", "distill.temperature": "2.0"}),
    ]
    return cases


def quarter_cap(records: list[dict[str, Any]]) -> int:
    """A quarter of the synthetic samples the core uniform ``fast:mi*`` run saw (needs that record)."""
    core = next((r for r in records if r.get("case") == CORE_FAST_STAR), None)
    if core is None or not core.get("synthetic_samples_seen"):
        raise RuntimeError(f"the SSD cases need the core {CORE_FAST_STAR} record (run it first, or --resume)")
    return max(1, int(core["synthetic_samples_seen"]) // 4)


def case_command(case: BreadthCase, args: argparse.Namespace, teacher: str, payload: Path, out: Path,
                 records: list[dict[str, Any]]) -> list[str]:
    """The ``cases.py`` command line for ``case`` (global ``--set`` first, the case's own overrides last)."""
    overrides = dict(case.overrides)
    if case.quarter_pool:
        overrides["distill.pool_cap"] = str(quarter_cap(records))
    cmd = [sys.executable, "-m", "benchmarks.distillation.cases", "--case", f"{case.base}:{case.mode}",
           "--teacher", teacher, "--condensed", str(payload), "--out", str(out),
           "--budget-seconds", str(args.budget_seconds * case.budget_factor), "--threads", str(args.threads)]
    cmd += [x for item in args.set for x in ("--set", item)]
    cmd += [x for key, value in overrides.items() for x in ("--set", f"{key}={value}")]
    return cmd + (["--quiet"] if args.quiet else [])


def run_breadth_case(case: BreadthCase, args: argparse.Namespace, teacher: str, payload: Path, work: Path,
                     records: list[dict[str, Any]]) -> dict[str, Any]:
    out = work / ("breadth_" + "".join(c if c.isalnum() else "_" for c in case.name))
    subprocess.run(case_command(case, args, teacher, payload, out, records), check=True)
    record = json.loads((out / "record.json").read_text(encoding="utf-8"))
    record |= {"case": case.name, "budget_seconds": args.budget_seconds * case.budget_factor}
    if case.quarter_pool:
        record["pool_cap"] = quarter_cap(records)
    return record


def run_breadth_cases(args: argparse.Namespace, teacher: str, payload: Path, work: Path,
                      records: list[dict[str, Any]], on_record: Callable[[dict[str, Any]], None]) -> None:
    """Run every breadth case not already in ``records`` (by ``case``), appending and reporting each."""
    done = {r.get("case") for r in records}
    for case in breadth_cases():
        if case.name in done:
            continue
        record = run_breadth_case(case, args, teacher, payload, work, records)
        records.append(record)
        on_record(record)


def breadth_targets(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue-6 targets, from whichever of the needed records exist."""
    by_case = {r.get("case"): r for r in records}
    acc = {name: r["student_accuracy"] for name, r in by_case.items() if r.get("student_accuracy") is not None}
    targets: dict[str, Any] = {}
    if "cmi:mi*" in acc and "cmi:mi+cs" in acc:
        gain = 100 * (acc["cmi:mi*"] - acc["cmi:mi+cs"])
        targets["cmi"] = {"gain_over_mi+cs_points": gain, "met": gain >= 2.0}
    for mode in ("mi", "mi*"):
        short, long = f"fast:{mode}@replay=generative", f"fast:{mode}@replay=generative,budget=x2"
        if short in by_case and long in by_case:
            ratio = by_case[long]["peak_memory_mb"] / by_case[short]["peak_memory_mb"]
            entry: dict[str, Any] = {"peak_memory_ratio_x2": ratio, "memory_met": ratio <= 1.10}
            if short in acc and f"fast:{mode}" in acc:
                entry["accuracy_vs_pool_points"] = 100 * (acc[short] - acc[f"fast:{mode}"])
                entry["accuracy_met"] = abs(entry["accuracy_vs_pool_points"]) <= 1.0
            targets[f"generative_{mode}"] = entry
    ssd, uniform = "fast:mi*@sampler=ssd,cap=1/4", CORE_FAST_STAR
    if ssd in acc and uniform in acc:
        delta = 100 * (acc[ssd] - acc[uniform])
        targets["ssd"] = {"vs_uniform_full_pool_points": delta, "met": delta >= -0.5,
                          "pool_cap": by_case[ssd].get("pool_cap")}
        if "fast:mi*@sampler=uniform,cap=1/4" in acc:
            targets["ssd"]["vs_uniform_same_cap_points"] = 100 * (acc[ssd] - acc["fast:mi*@sampler=uniform,cap=1/4"])
    if "fast:mi*@kd_loss=kl_logit_std" in acc and uniform in acc:
        targets["kl_logit_std"] = {"vs_kl_points": 100 * (acc["fast:mi*@kd_loss=kl_logit_std"] - acc[uniform])}
    return targets
