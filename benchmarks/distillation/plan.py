"""The distillation benchmark's cases and how they run.

A ``Case`` is one ``benchmarks/distillation/cases.py`` process: a ``BASE:MODE`` (or ``full``) spec, the
``distill.*`` overrides that make it differ from the FMNIST-CPU setting, and a budget factor. ``run_cases``
runs cases in ``workers`` parallel processes (one torch thread each, so two workers keep both cores of the
CI machine busy without oversubscribing them); a case that needs another case's record waits for it."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CORE_FAST_STAR = "fast:mi*"  # the core case whose synthetic-sample count sizes the SSD cases
BASES = ("fast", "deepinversion")
MODES = ("mi", "mi+cs", "mi*")

Record = dict[str, Any]


@dataclass(frozen=True)
class Case:
    name: str  # unique record key, e.g. "fast:mi*" or "fast:mi*@replay=generative"
    spec: str  # cases.py --case: "BASE:MODE" or "full"
    overrides: dict[str, str] = field(default_factory=dict)  # distill.key -> value
    budget_factor: float = 1.0  # times the benchmark's per-case budget
    quarter_synthetic: bool = False  # synthetic_budget = pool_cap = 1/4 of the synthetic samples the core fast:mi* made

    @property
    def directory(self) -> str:
        return "".join(c if c.isalnum() else "_" for c in self.name)


def core_cases() -> list[Case]:
    """Issue 4: cs-only, the three synthesising modes of both base methods, and the full-data bound."""
    names = ["none:cs-only"] + [f"{b}:{m}" for b in BASES for m in MODES] + ["full"]
    return [Case(name, name) for name in names]


def quarter_cap(records: list[Record]) -> int:
    """A quarter of the synthetic samples the core uniform ``fast:mi*`` run made (needs that record)."""
    core = next((r for r in records if r.get("case") == CORE_FAST_STAR), None)
    if core is None or not core.get("synthetic_samples_seen"):
        raise RuntimeError(f"the SSD cases need the core {CORE_FAST_STAR} record (run it first, or --resume)")
    return max(1, int(core["synthetic_samples_seen"]) // 4)


def case_command(case: Case, args: argparse.Namespace, teacher: str, payload: Path, out: Path,
                 records: list[Record]) -> list[str]:
    """The ``cases.py`` command line for ``case`` (global ``--set`` first, the case's own overrides last)."""
    overrides = dict(case.overrides)
    if case.quarter_synthetic:
        quarter = str(quarter_cap(records))
        overrides |= {"distill.synthetic_budget": quarter, "distill.pool_cap": quarter}
    cmd = [sys.executable, "-m", "benchmarks.distillation.cases", "--case", case.spec,
           "--teacher", teacher, "--condensed", str(payload), "--out", str(out),
           "--budget-seconds", str(args.budget_seconds * case.budget_factor),
           "--full-epochs", str(args.full_epochs), "--threads", str(args.threads)]
    cmd += [x for item in args.set for x in ("--set", item)]
    cmd += [x for key, value in overrides.items() for x in ("--set", f"{key}={value}")]
    return cmd + (["--quiet"] if args.quiet else [])


def run_case(case: Case, args: argparse.Namespace, teacher: str, payload: Path, work: Path,
             records: list[Record]) -> Record:
    out = work / case.directory
    subprocess.run(case_command(case, args, teacher, payload, out, records), check=True)
    record = json.loads((out / "record.json").read_text(encoding="utf-8"))
    record |= {"case": case.name, "budget_seconds": args.budget_seconds * case.budget_factor}
    if case.quarter_synthetic:
        record["synthetic_budget"] = record["pool_cap"] = quarter_cap(records)
    return record


def _ready(case: Case, records: list[Record], waiting: list[Case]) -> bool:
    if not case.quarter_synthetic or any(r.get("case") == CORE_FAST_STAR for r in records):
        return True
    if not any(c.name == CORE_FAST_STAR for c in waiting):
        quarter_cap(records)  # raises the clear "run it first" error
    return False


def run_cases(cases: list[Case], args: argparse.Namespace, teacher: str, payload: Path, work: Path,
              records: list[Record], on_record: Callable[[Record], None]) -> None:
    """Run every case not already in ``records`` (by ``case``) on ``args.workers`` parallel processes,
    longest first, appending each record and calling ``on_record`` as it finishes."""
    done = {r.get("case") for r in records}
    pending = sorted((c for c in cases if c.name not in done), key=lambda c: -c.budget_factor)
    running: dict[Future[Record], Case] = {}
    with ThreadPoolExecutor(max_workers=args.workers) as pool:
        while pending or running:
            waiting = pending + list(running.values())
            for case in [c for c in pending if _ready(c, records, waiting)][: args.workers - len(running)]:
                pending.remove(case)
                running[pool.submit(run_case, case, args, teacher, payload, work, records)] = case
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                running.pop(future)
                records.append(future.result())
                on_record(records[-1])
