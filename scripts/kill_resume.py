"""Crash-safety measurement (issue 13.5): start ``condex distill``, kill -9 it at given moments, resume with
only ``--out`` each time, and report how much training every kill cost.

    .venv/bin/python scripts/kill_resume.py --out /tmp/kill-run --kill-after 8 25 50 --budget-seconds 60

For each kill: the training seconds the process had logged (its last epoch line) against those of the
``state.pt`` it left, and an upper bound that adds all wall time since its last metrics line; then
``--resume`` must finish the run, and no temp file may remain. Prints a JSON summary."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def condex(*args: str) -> list[str]:
    return [sys.executable, "-m", "shared.cli", *args]


def state_seconds(out: Path) -> tuple[int, float] | None:
    """(epoch, training seconds) of the checkpoint in ``out``, or None if there is none."""
    state_file = out / "state.pt"
    if not state_file.is_file():
        return None
    state = torch.load(state_file, map_location="cpu", weights_only=True)
    timer = state["timer"]
    return int(state["epoch"]), float(timer.get("synthesis", 0.0) + timer.get("kd", 0.0))


def last_logged(out: Path) -> tuple[int, float, float]:
    """(epoch, training seconds, wall time written) of the last complete epoch line in metrics.jsonl."""
    path = out / "metrics.jsonl"
    best = (0, 0.0, 0.0)
    if not path.is_file():  # killed before the first epoch ended: training began when run.json was written
        started = out / "run.json"
        return 0, 0.0, started.stat().st_mtime if started.is_file() else time.time()
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a torn last line
        if record.get("event") == "epoch":
            best = (int(record["epoch"]), float(record["seconds"]), best[2])
    return best[0], best[1], path.stat().st_mtime  # the file's last write: this segment's last line


def temp_files(out: Path) -> list[str]:
    return sorted(str(p.relative_to(out)) for p in out.rglob(".*") if p.name != ".DS_Store")


def run_until(argv: list[str], seconds: float | None, log: Path) -> tuple[int | None, float]:
    """Run ``argv``; kill -9 after ``seconds`` (None: let it finish). Returns (exit code or None, wall time)."""
    start = time.monotonic()
    with log.open("a") as handle:
        proc = subprocess.Popen(argv, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT,
                                env={**os.environ, "CONDEX_QUIET": "1"})
        try:
            proc.wait(timeout=seconds)
            return proc.returncode, time.monotonic() - start
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            return None, time.monotonic() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--kill-after", nargs="+", type=float, required=True, help="wall seconds of each segment")
    parser.add_argument("--budget-seconds", type=float, default=60.0)
    parser.add_argument("--condensed", default="real:10")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    out = args.out.resolve()
    log = out.with_suffix(".log")
    extra = [x for item in args.set for x in ("--set", item)]
    first = condex("distill", "--condensed", args.condensed, "--budget-seconds", str(args.budget_seconds),
                   "--epochs", "0", "--out", str(out), "--no-progress", *extra)
    resume = condex("distill", "--out", str(out), "--resume", "--no-progress")
    kills = []
    for i, after in enumerate(args.kill_after):
        code, _ = run_until(first if i == 0 else resume, after, log)
        if code is not None:
            print(f"segment {i} ended by itself (exit {code}) before the kill", file=sys.stderr)
            break
        killed_at = time.time()
        epoch_logged, seconds_logged, logged_at = last_logged(out)
        saved = state_seconds(out)
        # upper bound on what the kill cost: the logged training not in the checkpoint plus all the wall time
        # (training, evaluation) since the last metrics line of this segment
        bound = None if saved is None else round(seconds_logged - saved[1] + killed_at - logged_at, 1)
        kills.append({"kill_after_s": after, "last_logged_epoch": epoch_logged,
                      "last_logged_train_s": round(seconds_logged, 1),
                      "checkpoint_epoch": None if saved is None else saved[0],
                      "checkpoint_train_s": None if saved is None else round(saved[1], 1),
                      "lost_logged_train_s": None if saved is None else round(seconds_logged - saved[1], 1),
                      "lost_upper_bound_s": bound,
                      "temp_files_left": temp_files(out)})
    code, _ = run_until(resume, None, log)
    summary = json.loads((out / "summary.json").read_text()) if (out / "summary.json").is_file() else {}
    result = {"kills": kills, "final_exit": code, "final_epochs": summary.get("epochs"),
              "final_train_s": summary.get("train_seconds"), "final_accuracy": summary.get("accuracy"),
              "temp_files_after": temp_files(out)}
    print(json.dumps(result, indent=2))
    return 0 if code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
