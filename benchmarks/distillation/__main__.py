"""Run the distillation benchmark: ``python -m benchmarks.distillation [--budget-seconds S] [--workers N]
[--breadth] [--resume]``.

FMNIST-CPU (``configs/setting/fmnist_cpu.yaml``): the default teacher, the configured student, a DM
IPC-10 condensed set (centralised; made on the fly and cached in the work directory unless
``--condensed`` is given). Every case gets the same training wall-time budget and runs in its own process
(``benchmarks/distillation/cases.py``) so peak memory is per case; ``--workers 2`` runs two cases at a time
with one torch thread each. The core cases are issue 4's (``plan.core_cases``); ``--breadth`` adds issue 6's
(``breadth.breadth_cases``). Writes ``benchmarks/results/distillation.{json,md,png}`` after every case."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.distillation.breadth import breadth_cases
from benchmarks.distillation.plan import Case, Record, core_cases, run_cases
from benchmarks.distillation.report import summarize, write_json, write_markdown, write_png
from shared.checkpoint import load_checkpoint
from shared.config import load_config
from shared.data import load_dataset
from shared.train import evaluate

RESULTS = Path(__file__).resolve().parents[1] / "results" / "distillation"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.distillation", description=__doc__)
    parser.add_argument("--budget-seconds", type=float, default=300.0, help="training wall time per case")
    parser.add_argument("--teacher", default=None, help="teacher checkpoint (default: teacher.checkpoint)")
    parser.add_argument("--condensed", default=None, help="payload file/folder (default: DM IPC 10 on the fly)")
    parser.add_argument("--dm-seconds", type=float, default=240.0, help="time budget of the on-the-fly DM run")
    parser.add_argument("--full-epochs", type=int, default=8, help="epochs of the full-real-data student")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per case (1 on a shared machine)")
    parser.add_argument("--workers", type=int, default=1, help="cases run in parallel (2 on a 2-core machine)")
    parser.add_argument("--breadth", action="store_true", help="also run the engine-breadth cases (issue 6)")
    parser.add_argument("--only", nargs="*", default=None,
                        help=f"case names to run (core: {' '.join(c.name for c in core_cases())})")
    parser.add_argument("--set", action="append", default=[], help="distill.key=value for every case")
    parser.add_argument("--resume", action="store_true", help="keep finished cases of an earlier run")
    parser.add_argument("--report-only", action="store_true",
                        help="rewrite the Markdown, PNG and targets from the existing results JSON; run nothing")
    parser.add_argument("--work-dir", default="/tmp/condex-bench-distillation")
    parser.add_argument("--out", default=str(RESULTS), help="results path without extension")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    if args.workers < 1 or args.threads < 1:
        parser.error("--workers and --threads must be >= 1")
    return args


def condensed_payload(args: argparse.Namespace, work: Path, dataset: str) -> tuple[Path, str]:
    """The condensed set every case uses: given, cached, or condensed now with DM (IPC from the config)."""
    if args.condensed:
        return Path(args.condensed), f"given ({args.condensed})"
    cfg = load_config()
    path = work / f"dm_ipc{cfg.condense.ipc}.safetensors"
    description = f"DM IPC {cfg.condense.ipc}, centralised on the full training set, {args.dm_seconds:.0f} s budget"
    if path.is_file():
        return path, description + " (cached)"
    from dataclasses import replace

    from client.condense import condense

    condense_cfg = replace(cfg.condense, method="dm", time_budget_s=args.dm_seconds, seed=cfg.seed)
    payload = condense(load_dataset(dataset, "train"), condense_cfg, progress=not args.quiet, device="cpu")
    payload.save(path)
    return path, description


def selected_cases(args: argparse.Namespace) -> list[Case]:
    cases = core_cases() + (breadth_cases() if args.breadth else [])
    if args.only is None:
        return cases
    unknown = set(args.only) - {c.name for c in cases}
    if unknown:
        raise SystemExit(f"--only: unknown case(s) {sorted(unknown)}; known: {[c.name for c in cases]} "
                         "(breadth cases need --breadth)")
    return [c for c in cases if c.name in args.only]


def earlier_results(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    path = out.with_suffix(".json")
    return json.loads(path.read_text(encoding="utf-8")) if args.resume and path.is_file() else {}


def write_results(out: Path, header: dict[str, Any], records: list[Record]) -> None:
    order = {c.name: i for i, c in enumerate(core_cases() + breadth_cases())}
    records.sort(key=lambda r: order.get(r["case"], len(order)))
    results = summarize(header, records)
    write_json(out.with_suffix(".json"), results)
    write_markdown(out.with_suffix(".md"), results)
    write_png(out.with_suffix(".png"), results)


def rewrite_report(out: Path) -> int:
    path = out.with_suffix(".json")
    if not path.is_file():
        raise SystemExit(f"--report-only: {path} does not exist; run the benchmark first")
    results = json.loads(path.read_text(encoding="utf-8"))
    derived = {"records", "targets", "breadth_targets", "full_data_student_accuracy", "forward_backward_fraction",
               "forward_backward_fraction_all_runs"}
    write_results(out, {k: v for k, v in results.items() if k not in derived}, results["records"])
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.report_only:
        return rewrite_report(Path(args.out))
    out, work = Path(args.out), Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    cfg = load_config()
    teacher_dir = args.teacher or cfg.teacher.checkpoint
    torch.set_num_threads(args.threads)
    teacher, card = load_checkpoint(teacher_dir)
    teacher_acc = evaluate(teacher, load_dataset(card.dataset, "test"))
    start = time.perf_counter()
    payload, description = condensed_payload(args, work, card.dataset)
    header = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": "python -m benchmarks.distillation " + shlex.join(argv if argv is not None else sys.argv[1:]),
        "machine": f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} CPU cores, "
                   f"torch {torch.__version__}",
        "teacher": {"arch": card.arch, "arch_kwargs": card.arch_kwargs, "accuracy": teacher_acc,
                    "checkpoint": str(teacher_dir)},
        "student_arch": cfg.distill.student, "budget_seconds": args.budget_seconds, "threads": args.threads,
        "workers": args.workers,
        "condensed": {"description": description, "path": str(payload),
                      "condense_seconds": time.perf_counter() - start},
        "distill_overrides": args.set,
    }
    earlier = earlier_results(args, out)
    header["commands"] = [*earlier.get("commands", []), header["command"]]
    records: list[Record] = earlier.get("records", [])

    def on_record(record: Record) -> None:
        print(f"{record['case']}: student accuracy {100 * record['student_accuracy']:.2f}% "
              f"(elapsed {time.perf_counter() - start:.0f} s)", flush=True)
        write_results(out, header, records)

    run_cases(selected_cases(args), args, str(teacher_dir), payload, work, records, on_record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
