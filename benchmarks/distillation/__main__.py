"""Run the distillation benchmark: ``python -m benchmarks.distillation [--budget-seconds S] [--seeds N]
[--workers N] [--condensed-set NAME=PATH ...] [--ipc1] [--breadth] [--only CASE ...] [--variant NAME:KEY=VALUE,...]
[--resume]``.

FMNIST-CPU (``configs/setting/fmnist_cpu.yaml``): the default teacher, the configured student and the
condensed sets. The primary set is ``dm-ipc10``: DM IPC 10, centralised, made on the fly and cached in the
work directory (``--condensed PATH`` replaces it with a payload file/folder named ``given``, or
``--condensed-name``);
``--condensed-set NAME=PATH`` (repeatable) adds payload files/folders (e.g. the default job's union of 10
site payloads), on which the core distillation cases run too; ``--ipc1`` adds ``fast:mi*@ipc1`` and
``fast:mi@ipc1`` on ``real-ipc1``: one real training image per class drawn with the job's seed
(``real:1``, chosen over DM IPC 1 because DM would need another condensation run of ``--dm-seconds``).
Breadth cases (``--breadth``, ``breadth.breadth_cases``) run on the primary set; the ceilings ``full``
(labels, to convergence, at most ``--full-epochs``) and ``full-kd`` (teacher KD on every training image)
need no set. ``--variant NAME:distill.key=value,...`` adds every selected case again as ``CASE@NAME`` with
those overrides: a sweep whose variants interleave on the workers, so each pair of jobs runs side by side.
Every case runs with seeds 0..N-1 (``--seeds``, the top-level ``seed`` key), each job in its
own process (``benchmarks/distillation/cases.py``) so peak memory is per job; ``--workers 2`` runs two jobs
at a time with one torch thread each, longest first. Every distillation job gets the same training
wall-time budget. ``--resume`` keeps the (condensed set, case, seed) runs of an earlier results file.
Writes ``benchmarks/results/distillation.{json,md,png}`` after every job (``report``: mean +- std over
seeds, bands, time to 60/70/80%, targets on means)."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from benchmarks.distillation.breadth import breadth_cases
from benchmarks.distillation.plan import (
    IPC1_SET,
    Case,
    Record,
    core_cases,
    ipc1_cases,
    plan_jobs,
    record_key,
    run_jobs,
    with_legacy_defaults,
)
from benchmarks.distillation.report import (
    DERIVED,
    condensed_sets,
    summarize,
    write_json,
    write_markdown,
    write_png,
)
from shared.checkpoint import load_checkpoint
from shared.config import apply_overrides, load_config
from shared.data import load_dataset
from shared.errors import CondexError
from shared.train import evaluate

RESULTS = Path(__file__).resolve().parents[1] / "results" / "distillation"
CondensedSets = dict[str, dict[str, Any]]  # name -> {"path", "description", "condense_seconds"}


def named_path(value: str) -> tuple[str, str]:
    """``NAME=PATH`` of ``--condensed-set``."""
    name, sep, path = value.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"{value!r}: expected NAME=PATH (a payload file or folder)")
    return name, path


def variant(value: str) -> tuple[str, dict[str, str]]:
    """``NAME:distill.key=value[,distill.key=value]`` of ``--variant``."""
    name, sep, rest = value.partition(":")
    pairs = [item.partition("=") for item in rest.split(",")] if rest else []
    if not sep or not name.isidentifier() or not pairs or any(not k.startswith("distill.") or not e or not v
                                                               for k, e, v in pairs):
        raise argparse.ArgumentTypeError(f"{value!r}: expected NAME:distill.key=value[,distill.key=value] "
                                         "(NAME a plain identifier)")
    return name, {k: v for k, _, v in pairs}


def with_variants(cases: list[Case], variants: list[tuple[str, dict[str, str]]]) -> list[Case]:
    """Every case, then each case once per variant as ``CASE@NAME`` (the variant's overrides win)."""
    extra = [replace(c, name=f"{c.name}@{name}", overrides=c.overrides | overrides)
             for name, overrides in variants for c in cases]
    return cases + extra


def check_overrides(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Every ``--set`` and ``--variant`` override applied to the setting and validated now, so a misspelt key
    or a bad value stops the benchmark before its first job, not as a failed job minutes into a sweep."""
    common = dict(item.split("=", 1) if "=" in item else (item, "") for item in args.set)
    for flag, overrides in [("--set", {}), *((f"--variant {name}", o) for name, o in args.variant)]:
        try:
            apply_overrides(load_config(), common | overrides).validate()
        except CondexError as exc:
            parser.error(f"{flag}: {exc}")


def all_cases() -> list[Case]:
    return core_cases() + breadth_cases() + ipc1_cases()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.distillation", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget-seconds", type=float, default=300.0, help="training wall time per case")
    parser.add_argument("--seeds", type=int, default=3, help="runs per case, with seeds 0..N-1")
    parser.add_argument("--teacher", default=None, help="teacher checkpoint (default: teacher.checkpoint)")
    parser.add_argument("--condensed", default=None,
                        help="payload file/folder replacing the primary set (named 'given'; default: DM IPC 10 "
                             "on the fly, named dm-ipc10)")
    parser.add_argument("--condensed-name", default="given", help="name of the --condensed set in the results")
    parser.add_argument("--condensed-set", type=named_path, action="append", default=[], metavar="NAME=PATH",
                        help="another payload file/folder the core cases also run on (repeatable)")
    parser.add_argument("--ipc1", action="store_true",
                        help="add fast:mi*@ipc1 and fast:mi@ipc1 (one real training image per class)")
    parser.add_argument("--dm-seconds", type=float, default=240.0, help="time budget of the on-the-fly DM run")
    parser.add_argument("--full-epochs", type=int, default=30,
                        help="epoch cap of case full (trained until accuracy stops improving)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per job (1 on a shared machine)")
    parser.add_argument("--workers", type=int, default=1, help="jobs run in parallel (2 on a 2-core machine)")
    parser.add_argument("--breadth", action="store_true", help="also run the engine-breadth cases (issue 6)")
    parser.add_argument("--only", nargs="*", default=None,
                        help=f"case names to run (core: {' '.join(c.name for c in core_cases())})")
    parser.add_argument("--set", action="append", default=[], help="distill.key=value for every case")
    parser.add_argument("--variant", type=variant, action="append", default=[], metavar="NAME:KEY=VALUE[,...]",
                        help="also run every selected case as CASE@NAME with these distill.* overrides "
                             "(repeatable; the jobs of all variants interleave, so they run side by side)")
    parser.add_argument("--resume", action="store_true", help="keep finished (set, case, seed) runs of an earlier run")
    parser.add_argument("--report-only", action="store_true",
                        help="rewrite the Markdown, PNG and targets from the existing results JSON; run nothing")
    parser.add_argument("--work-dir", default="/tmp/condex-bench-distillation")
    parser.add_argument("--out", default=str(RESULTS), help="results path without extension")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    if args.workers < 1 or args.threads < 1 or args.seeds < 1 or args.full_epochs < 1:
        parser.error("--workers, --threads, --seeds and --full-epochs must be >= 1")
    names = [name for name, _ in args.condensed_set]
    if len({name for name, _ in args.variant}) != len(args.variant):
        parser.error("--variant names must be unique")
    check_overrides(parser, args)
    if len(set(names)) != len(names) or {args.condensed_name, IPC1_SET} & set(names):
        parser.error(f"--condensed-set names must be unique and not {args.condensed_name!r} or {IPC1_SET!r}")
    return args


def primary_set(args: argparse.Namespace, work: Path, dataset: str) -> tuple[str, dict[str, Any]]:
    """The primary condensed set: given, cached, or condensed now with DM (IPC from the config)."""
    if args.condensed:
        return args.condensed_name, {"path": args.condensed, "description": f"given ({args.condensed})",
                                     "condense_seconds": 0.0}
    cfg = load_config()
    name, path = f"dm-ipc{cfg.condense.ipc}", work / f"dm_ipc{cfg.condense.ipc}.safetensors"
    description = f"DM IPC {cfg.condense.ipc}, centralised on the full training set, {args.dm_seconds:.0f} s budget"
    start = time.perf_counter()
    if path.is_file():
        return name, {"path": str(path), "description": description + " (cached)", "condense_seconds": 0.0}
    from client.condense import condense

    condense_cfg = replace(cfg.condense, method="dm", time_budget_s=args.dm_seconds, seed=cfg.seed)
    payload = condense(load_dataset(dataset, "train"), condense_cfg, progress=not args.quiet, device="cpu")
    payload.save(path)
    return name, {"path": str(path), "description": description, "condense_seconds": time.perf_counter() - start}


def build_sets(args: argparse.Namespace, work: Path, dataset: str) -> CondensedSets:
    """Primary set first, then every ``--condensed-set``, then (``--ipc1``) ``real-ipc1``."""
    name, info = primary_set(args, work, dataset)
    sets = {name: info}
    for extra, path in args.condensed_set:
        if not Path(path).exists():
            raise SystemExit(f"--condensed-set {extra}={path}: no such file or folder")
        sets[extra] = {"path": path, "description": f"given ({path})", "condense_seconds": 0.0}
    if args.ipc1:
        sets[IPC1_SET] = {"path": "real:1", "condense_seconds": 0.0,
                          "description": "1 real training image per class, drawn with each job's seed (real:1)"}
    return sets


def selected_cases(args: argparse.Namespace) -> list[Case]:
    cases = core_cases() + (breadth_cases() if args.breadth else []) + (ipc1_cases() if args.ipc1 else [])
    if args.only is None:
        return with_variants(cases, args.variant)
    unknown = set(args.only) - {c.name for c in cases}
    if unknown:
        raise SystemExit(f"--only: unknown case(s) {sorted(unknown)}; known: {[c.name for c in cases]} "
                         "(breadth cases need --breadth, @ipc1 cases --ipc1)")
    return with_variants([c for c in cases if c.name in args.only], args.variant)


def earlier_results(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    path = out.with_suffix(".json")
    return json.loads(path.read_text(encoding="utf-8")) if args.resume and path.is_file() else {}


def sort_records(records: list[Record], set_names: list[str]) -> None:
    """By condensed set (ceilings last), case order, seed."""
    order = {c.name: i for i, c in enumerate(all_cases())}
    sets = {name: i for i, name in enumerate(set_names)}

    def key(r: Record) -> tuple[int, int, int]:
        condensed, case, seed = record_key(r)
        return (len(sets) + 1 if condensed is None else sets.get(condensed, len(sets)), order.get(case, len(order)),
                seed)

    records.sort(key=key)


def write_results(out: Path, header: dict[str, Any], records: list[Record]) -> None:
    sort_records(records, list(condensed_sets(header)))
    results = summarize(header, records)
    write_json(out.with_suffix(".json"), results)
    write_markdown(out.with_suffix(".md"), results)
    write_png(out.with_suffix(".png"), results)


def legacy_header(results: dict[str, Any]) -> dict[str, Any]:
    """The header of a results file, with a pre-seeds file's one condensed set as the default set."""
    header = {k: v for k, v in results.items() if k not in DERIVED and k != "condensed"}
    sets = condensed_sets(results)
    return {"condensed_sets": sets, "primary_set": next(iter(sets), None), "seeds": 1} | header


def rewrite_report(out: Path) -> int:
    path = out.with_suffix(".json")
    if not path.is_file():
        raise SystemExit(f"--report-only: {path} does not exist; run the benchmark first")
    results = json.loads(path.read_text(encoding="utf-8"))
    header = legacy_header(results)
    records = [with_legacy_defaults(r, header["primary_set"]) for r in results["records"]]
    write_results(out, header, records)
    return 0


def make_header(args: argparse.Namespace, argv: list[str] | None, teacher: dict[str, Any],
                sets: CondensedSets, earlier: dict[str, Any]) -> dict[str, Any]:
    cfg = load_config()
    command = "python -m benchmarks.distillation " + shlex.join(argv if argv is not None else sys.argv[1:])
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "command": command,
        "commands": [*earlier.get("commands", []), command],
        "machine": f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} CPU cores, "
                   f"torch {torch.__version__}",
        "teacher": teacher, "student_arch": cfg.distill.student, "budget_seconds": args.budget_seconds,
        "threads": args.threads, "workers": args.workers, "seeds": args.seeds, "full_epochs": args.full_epochs,
        "condensed_sets": condensed_sets(earlier) | sets if earlier else sets, "primary_set": next(iter(sets)),
        "distill_overrides": args.set,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.report_only:
        return rewrite_report(Path(args.out))
    out, work = Path(args.out), Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    teacher_dir = args.teacher or load_config().teacher.checkpoint
    torch.set_num_threads(args.threads)
    teacher, card = load_checkpoint(teacher_dir)
    teacher_info = {"arch": card.arch, "arch_kwargs": card.arch_kwargs, "checkpoint": str(teacher_dir),
                    "accuracy": evaluate(teacher, load_dataset(card.dataset, "test"))}
    start = time.perf_counter()
    sets = build_sets(args, work, card.dataset)
    earlier = earlier_results(args, out)
    header = make_header(args, argv, teacher_info, sets, earlier)
    primary = earlier.get("primary_set") or (next(iter(condensed_sets(earlier)), None) if earlier else None)
    records = [with_legacy_defaults(r, primary or header["primary_set"]) for r in earlier.get("records", [])]

    def on_record(record: Record) -> None:
        print(f"{record['case']} [{record['condensed'] or 'no condensed set'}] seed {record['seed']}: student "
              f"accuracy {100 * record['student_accuracy']:.2f}% (elapsed {time.perf_counter() - start:.0f} s)",
              flush=True)
        write_results(out, header, records)

    jobs = plan_jobs(selected_cases(args), [n for n in sets if n != IPC1_SET], args.seeds)
    run_jobs(jobs, args, str(teacher_dir), {n: info["path"] for n, info in sets.items()}, work, records, on_record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
