"""Run the distillation benchmark: ``python -m benchmarks.distillation [--budget-seconds S] [--resume]``.

FMNIST-CPU (``configs/setting/fmnist_cpu.yaml``): the default teacher, the configured student, a DM
IPC-10 condensed set (centralised; made on the fly and cached in the work directory unless
``--condensed`` is given). Every case gets the same training wall-time budget and runs in its own process
(``benchmarks/distillation/cases.py``) so peak memory is per case. Writes
``benchmarks/results/distillation.{json,md,png}`` after every case."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.distillation.report import summarize, write_json, write_markdown, write_png
from shared.checkpoint import load_checkpoint
from shared.config import load_config
from shared.data import load_dataset
from shared.train import evaluate

RESULTS = Path(__file__).resolve().parents[1] / "results" / "distillation"
BASES = ("fast", "deepinversion")
MODES = ("mi", "mi+cs", "mi*")


def default_cases() -> list[str]:
    return ["none:cs-only"] + [f"{b}:{m}" for b in BASES for m in MODES] + ["full"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.distillation", description=__doc__)
    parser.add_argument("--budget-seconds", type=float, default=300.0, help="training wall time per case")
    parser.add_argument("--teacher", default=None, help="teacher checkpoint (default: teacher.checkpoint)")
    parser.add_argument("--condensed", default=None, help="payload file/folder (default: DM IPC 10 on the fly)")
    parser.add_argument("--dm-seconds", type=float, default=240.0, help="time budget of the on-the-fly DM run")
    parser.add_argument("--full-epochs", type=int, default=8, help="epochs of the full-real-data student")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per case (1 on a shared machine)")
    parser.add_argument("--only", nargs="*", default=None, help=f"cases to run (default: {' '.join(default_cases())})")
    parser.add_argument("--set", action="append", default=[], help="distill.key=value for every case")
    parser.add_argument("--resume", action="store_true", help="keep finished cases of an earlier run")
    parser.add_argument("--work-dir", default="/tmp/condex-bench-distillation")
    parser.add_argument("--out", default=str(RESULTS), help="results path without extension")
    parser.add_argument("--quiet", action="store_true")
    return parser.parse_args(argv)


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


def run_case(case: str, args: argparse.Namespace, teacher: str, payload: Path, work: Path) -> dict[str, Any]:
    out = work / case.replace(":", "_").replace("*", "star").replace("+", "plus")
    cmd = [sys.executable, "-m", "benchmarks.distillation.cases", "--case", case, "--teacher", teacher,
           "--condensed", str(payload), "--out", str(out), "--budget-seconds", str(args.budget_seconds),
           "--full-epochs", str(args.full_epochs), "--threads", str(args.threads)]
    cmd += [x for item in args.set for x in ("--set", item)] + (["--quiet"] if args.quiet else [])
    subprocess.run(cmd, check=True)
    record = json.loads((out / "record.json").read_text(encoding="utf-8"))
    record["case"] = case
    return record


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
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
        "machine": f"{platform.machine()} {platform.processor() or ''} 2 CPU cores (shared), torch {torch.__version__}",
        "teacher": {"arch": card.arch, "arch_kwargs": card.arch_kwargs, "accuracy": teacher_acc,
                    "checkpoint": str(teacher_dir)},
        "student_arch": cfg.distill.student, "budget_seconds": args.budget_seconds, "threads": args.threads,
        "condensed": {"description": description, "path": str(payload),
                      "condense_seconds": time.perf_counter() - start},
        "distill_overrides": args.set,
    }
    records = json.loads(out.with_suffix(".json").read_text())["records"] if args.resume and \
        out.with_suffix(".json").is_file() else []
    done = {r.get("case") for r in records}
    for case in args.only or default_cases():
        if case in done:
            continue
        t0 = time.perf_counter()
        record = run_case(case, args, str(teacher_dir), payload, work)
        records.append(record)
        print(f"{case}: student accuracy {100 * record['student_accuracy']:.2f}% "
              f"(case wall time {time.perf_counter() - t0:.0f} s)", flush=True)
        results = summarize(header, records)
        write_json(out.with_suffix(".json"), results)
        write_markdown(out.with_suffix(".md"), results)
        write_png(out.with_suffix(".png"), results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
