"""One benchmark case, run in its own process so its peak memory is its own.

``python -m benchmarks.distillation.cases --case fast:mi* --teacher DIR --condensed FILE --out DIR ...``
writes ``DIR/record.json``. Case ``full`` trains the student on the full real training set instead."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from server.distill import Distiller, load_condensed
from server.run import peak_memory_mb
from shared.checkpoint import load_checkpoint
from shared.config import apply_overrides, load_config
from shared.data import load_dataset
from shared.models import build_model
from shared.train import evaluate, train_classifier


def run_distill_case(base: str, mode: str, args: argparse.Namespace) -> dict[str, Any]:
    cfg = load_config()
    apply_overrides(cfg, {"distill.base": base, "distill.mode": mode, "distill.epochs": 0,
                          "distill.budget_seconds": args.budget_seconds, "distill.num_threads": args.threads,
                          **dict(item.split("=", 1) for item in args.set)})
    cfg.validate()
    teacher, card = load_checkpoint(args.teacher)
    condensed = load_condensed(args.condensed, card)
    test = load_dataset(card.dataset, "test")
    distiller = Distiller(cfg.distill, teacher, card, condensed, test, args.out, "cpu", cfg.seed,
                          progress=not args.quiet, provenance={"benchmark": "distillation"})
    result = distiller.fit()
    phases = result.phase_seconds
    return {
        "base": base if mode != "cs-only" else "none", "mode": mode, "student_accuracy": result.accuracy,
        "seconds": result.train_seconds, "synthesis_seconds": phases.get("synthesis", 0.0),
        "kd_seconds": phases.get("kd", 0.0),
        "other_seconds": sum(v for k, v in phases.items() if k not in ("synthesis", "kd")),
        "forward_backward_fraction": result.compute_fraction, "epochs": result.epochs,
        "pool_samples_at_end": result.pool_size, "synthetic_samples_seen": result.synthetic_seen,
        "peak_memory_mb": result.peak_memory_mb, "curve": result.curve,
        "replay": cfg.distill.replay, "sampling": cfg.distill.sampler, "kd_loss": cfg.distill.kd_loss,
    }


def run_full_case(args: argparse.Namespace) -> dict[str, Any]:
    """The upper bound: the same student architecture trained with labels on all real training images."""
    cfg = load_config()
    _, card = load_checkpoint(args.teacher)
    train, test = load_dataset(card.dataset, "train"), load_dataset(card.dataset, "test")
    torch.manual_seed(cfg.seed)
    student = build_model(cfg.distill.student, card.num_classes, card.in_channels, card.image_size)
    start = time.perf_counter()
    history = train_classifier(student, train, None, epochs=args.full_epochs, batch_size=128, lr=0.05,
                               progress=not args.quiet, seed=cfg.seed)
    seconds = time.perf_counter() - start
    accuracy = evaluate(student, test)
    return {"base": "none", "mode": "full-data", "student_accuracy": accuracy, "seconds": seconds,
            "synthesis_seconds": 0.0, "kd_seconds": 0.0, "other_seconds": 0.0, "epochs": args.full_epochs,
            "train_loss": history.epochs[-1].loss, "peak_memory_mb": peak_memory_mb(), "curve": []}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.distillation.cases")
    parser.add_argument("--case", required=True, help="BASE:MODE (e.g. fast:mi*) or full")
    parser.add_argument("--teacher", required=True)
    parser.add_argument("--condensed", default="")
    parser.add_argument("--out", required=True)
    parser.add_argument("--budget-seconds", type=float, default=300.0)
    parser.add_argument("--full-epochs", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--set", action="append", default=[], help="distill.key=value override")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.case == "full":
        record = run_full_case(args)
    else:
        base, _, mode = args.case.partition(":")
        record = run_distill_case(base, mode, args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "record.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
