"""The distillation benchmark's cases, jobs and how they run.

A ``Case`` is one ``benchmarks/distillation/cases.py`` configuration: a ``BASE:MODE`` (or ``full`` /
``full-kd``) spec, the ``distill.*`` overrides that make it differ from the FMNIST-CPU setting, a budget
factor and which condensed set(s) it runs on (every payload set, the primary one, a fixed one, or none).
A ``Job`` is one process: a case on one condensed set with one seed (the top-level ``seed`` config key);
its record carries ``case``, ``condensed`` (the set's name, ``None`` for the ceilings) and ``seed``.
``run_jobs`` runs the jobs not yet recorded in ``workers`` parallel processes (one torch thread each, so two
workers keep both cores of the CI machine busy without oversubscribing them), longest first; a job that
needs other jobs' records (the SSD cases' quarter cap) waits until every planned core ``fast:mi*`` job of
its set has finished."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CORE_FAST_STAR = "fast:mi*"  # the core case whose synthetic-sample count sizes the SSD cases
BASES = ("fast", "generative-deepinversion")
MODES = ("mi", "mi+cs", "mi*")
CEILINGS = ("full", "full-kd")  # need no condensed set: labels, or teacher logits, on the full training set
DEFAULT_SET = "dm-ipc10"  # the primary condensed set when none is given (DM IPC 10, made on the fly)
IPC1_SET = "real-ipc1"  # one real training image per class, drawn with the job's seed
ALL_SETS, PRIMARY_SET = "<all payload sets>", "<primary set>"  # Case.condensed choices besides a set name

Record = dict[str, Any]
JobKey = tuple[str | None, str, int]  # (condensed set, case, seed)


@dataclass(frozen=True)
class Case:
    name: str  # unique case name, e.g. "fast:mi*" or "fast:mi*@replay=generative"
    spec: str  # cases.py --case: "BASE:MODE", "full" or "full-kd"
    overrides: dict[str, str] = field(default_factory=dict)  # distill.key -> value
    budget_factor: float = 1.0  # times the benchmark's per-case budget
    quarter_synthetic: bool = False  # synthetic_budget = pool_cap = 1/4 of the synthetic samples fast:mi* made
    condensed: str | None = PRIMARY_SET  # ALL_SETS, PRIMARY_SET, a set name, or None (no condensed set)

    @property
    def directory(self) -> str:
        return "".join(c if c.isalnum() else "_" for c in self.name)


@dataclass(frozen=True)
class Job:
    case: Case
    seed: int
    condensed: str | None  # the condensed set's name (None: the ceilings)

    @property
    def key(self) -> JobKey:
        return (self.condensed, self.case.name, self.seed)

    @property
    def label(self) -> str:
        return f"{self.case.name} [{self.condensed or 'no condensed set'}] seed {self.seed}"

    def directory(self, work: Path) -> Path:
        return work / safe_name(self.condensed or "none") / self.case.directory / f"seed{self.seed}"


def safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


def core_cases() -> list[Case]:
    """Issue 4: cs-only and the three synthesising modes of both base methods on every payload set, and the
    two ceilings: ``full`` (labels, to convergence) and ``full-kd`` (teacher KD on all real training images)."""
    names = ["none:cs-only"] + [f"{b}:{m}" for b in BASES for m in MODES]
    return [Case(name, name, condensed=ALL_SETS) for name in names] + [Case(c, c, condensed=None) for c in CEILINGS]


def ipc1_cases() -> list[Case]:
    """``--ipc1``: ``fast:mi*`` and ``fast:mi`` with one real image per class (``real:1``)."""
    return [Case(f"{spec}@ipc1", spec, condensed=IPC1_SET) for spec in (CORE_FAST_STAR, "fast:mi")]


def record_key(record: Record) -> JobKey:
    return (record.get("condensed"), record["case"], int(record.get("seed", 0)))


def with_legacy_defaults(record: Record, primary: str) -> Record:
    """A record written before seeds and several sets existed: seed 0, on ``primary`` unless a ceiling."""
    legacy = {"seed": 0, "condensed": None if record.get("case") in CEILINGS else primary}
    return legacy | record


def plan_jobs(cases: Sequence[Case], payload_sets: Sequence[str], seeds: int) -> list[Job]:
    """Every (case, condensed set, seed) job: seeds 0..seeds-1; core cases on every payload set."""
    jobs = []
    for seed in range(seeds):
        for case in cases:
            if case.condensed == ALL_SETS:
                names: list[str | None] = list(payload_sets)
            else:
                names = [payload_sets[0] if case.condensed == PRIMARY_SET else case.condensed]
            jobs += [Job(case, seed, name) for name in names]
    return jobs


def _is_fast_star(condensed: str | None, case: str) -> Callable[[Record], bool]:
    return lambda r: r.get("case") == case and r.get("condensed") == condensed


def quarter_cap(records: list[Record], condensed: str | None = DEFAULT_SET) -> int:
    """A quarter of the mean synthetic-sample count of the core ``fast:mi*`` records of ``condensed``."""
    seen = [int(r["synthetic_samples_seen"]) for r in records
            if _is_fast_star(condensed, CORE_FAST_STAR)(r) and r.get("synthetic_samples_seen")]
    if not seen:
        raise RuntimeError(f"the SSD cases need a core {CORE_FAST_STAR} record on {condensed} "
                           "(run it first, or --resume)")
    return max(1, int(sum(seen) / len(seen)) // 4)


def case_command(job: Job, args: argparse.Namespace, teacher: str, sets: dict[str, str], out: Path,
                 cap: int | None = None) -> list[str]:
    """The ``cases.py`` command line for ``job`` (global ``--set`` first, the case's own overrides last)."""
    case = job.case
    overrides = dict(case.overrides)
    if cap is not None:
        overrides |= {"distill.synthetic_budget": str(cap), "distill.pool_cap": str(cap)}
    cmd = [sys.executable, "-m", "benchmarks.distillation.cases", "--case", case.spec, "--seed", str(job.seed),
           "--teacher", teacher, "--out", str(out), "--budget-seconds", str(args.budget_seconds * case.budget_factor),
           "--full-epochs", str(args.full_epochs), "--threads", str(args.threads)]
    cmd += ["--condensed", sets[job.condensed]] if job.condensed is not None else []
    cmd += [x for item in args.set for x in ("--set", item)]
    cmd += [x for key, value in overrides.items() for x in ("--set", f"{key}={value}")]
    return cmd + (["--quiet"] if args.quiet else [])


def run_job(job: Job, args: argparse.Namespace, teacher: str, sets: dict[str, str], work: Path,
            records: list[Record]) -> Record:
    out = job.directory(work)
    cap = quarter_cap(records, job.condensed) if job.case.quarter_synthetic else None
    subprocess.run(case_command(job, args, teacher, sets, out, cap), check=True)
    record = json.loads((out / "record.json").read_text(encoding="utf-8"))
    record |= {"case": job.case.name, "condensed": job.condensed, "seed": job.seed,
               "budget_seconds": args.budget_seconds * job.case.budget_factor}
    if cap is not None:
        record["synthetic_budget"] = record["pool_cap"] = cap
    return record


def _ready(job: Job, records: list[Record], waiting: list[Job]) -> bool:
    """A quarter-cap job waits until no core ``fast:mi*`` job of its set is pending or running."""
    if not job.case.quarter_synthetic:
        return True
    if any(j.case.name == CORE_FAST_STAR and j.condensed == job.condensed for j in waiting):
        return False
    quarter_cap(records, job.condensed)  # raises the clear "run it first" error if there is no record
    return True


def _priority(job: Job) -> tuple[float, int, int]:
    """Longest first; among equals the core ``fast:mi*`` jobs others wait for, then by seed."""
    return (-job.case.budget_factor, 0 if job.case.name == CORE_FAST_STAR else 1, job.seed)


def run_jobs(jobs: list[Job], args: argparse.Namespace, teacher: str, sets: dict[str, str], work: Path,
             records: list[Record], on_record: Callable[[Record], None]) -> None:
    """Run every job not already in ``records`` (by (condensed, case, seed)) on ``args.workers`` parallel
    processes, appending each record and calling ``on_record`` as it finishes."""
    done = {record_key(r) for r in records}
    pending = sorted((j for j in jobs if j.key not in done), key=_priority)
    running: dict[Future[Record], Job] = {}
    with ThreadPoolExecutor(max_workers=args.workers) as pool:
        while pending or running:
            waiting = pending + list(running.values())
            for job in [j for j in pending if _ready(j, records, waiting)][: args.workers - len(running)]:
                pending.remove(job)
                running[pool.submit(run_job, job, args, teacher, sets, work, records)] = job
            if not running:
                raise RuntimeError(f"no job can start: {[j.label for j in pending]}")
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                running.pop(future)
                records.append(future.result())
                on_record(records[-1])
