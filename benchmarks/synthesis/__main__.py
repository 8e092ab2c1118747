"""Synthesis benchmark: ``python -m benchmarks.synthesis [--syntheses N] [--seeds S] [--only NAME ...]``.

What the model inversion makes, separated from KD: the default FMNIST teacher, a fresh generator per
(variant, seed), ``N`` calls of the base method's ``synthesize()`` with the adversarial term off (there is
no student to fool). Every ``N/10`` batches it records the teacher's agreement with the requested classes,
label entropy, confidence, the raw BN-statistics loss and precision/recall/coverage of the batch's teacher
features against 1000 *real* test images (the benchmark may look at real data; the server never does).
Variants differ only in ``distill.*`` values (``VARIANTS``). Writes
``benchmarks/results/synthesis.{json,md,png}``."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from server.inversion import Generator, InversionContext, build_method
from server.inversion.quality import label_statistics, manifold_metrics
from shared.checkpoint import load_checkpoint
from shared.config import load_config
from shared.config.distill import DistillConfig
from shared.data import load_dataset
from shared.models import build_model

RESULTS = Path(__file__).resolve().parents[1] / "results" / "synthesis"
FAST_DATAFREE = {"bn_weight": 10.0, "oh_weight": 0.5, "lr_latent": 0.015}
VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "add": {"noisy_groups": 0},
    "add+noisy": {"noisy_groups": 25},
    "mul-conditioning": {"generator_conditioning": "mul", "noisy_groups": 0},
    "unconditional": {"conditional_generator": False, "noisy_groups": 0},
    "fast-datafree-weights": FAST_DATAFREE,
    "bn1-oh1": {"bn_weight": 1.0, "oh_weight": 1.0},
    "no-synthesis-augment": {"synthesis_augment": "none"},
    "no-bn-momentum": {"bn_momentum": 0.0},
    "reptile": {"fast_meta": "reptile"},
}
METRICS = ("agreement", "label_entropy", "confidence", "classes_present", "bn_raw", "precision", "recall",
           "coverage")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.synthesis", description=__doc__)
    parser.add_argument("--syntheses", type=int, default=100, help="synthesize() calls per run")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--base", default=None, help="inversion method (default: distill.base)")
    parser.add_argument("--only", nargs="*", default=None, help=f"variants ({' '.join(VARIANTS)})")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="distill.key=value for every variant (before the variant's own values)")
    return parser.parse_args(argv)


def run_variant(name: str, seed: int, args: argparse.Namespace, teacher: torch.nn.Module, card: Any,
                reference: torch.Tensor) -> list[dict[str, float]]:
    base = load_config().distill
    values = {k: getattr(base, k) for k in DistillConfig.__dataclass_fields__}
    for item in args.set:
        key, _, value = item.removeprefix("distill.").partition("=")
        values[key] = type(values[key])(value) if not isinstance(values[key], bool) else value == "true"
    values |= VARIANTS[name]
    values |= {"adv_weight": 0.0, "mode": "mi"} | ({"base": args.base} if args.base else {})
    cfg = DistillConfig(**values)
    cfg.validate()
    torch.manual_seed(seed)
    generator = Generator(cfg.latent_dim, card.in_channels, card.image_size, card.mean, card.std,
                          width=cfg.generator_width, num_classes=card.num_classes if cfg.conditional_generator else 0,
                          conditioning=cfg.generator_conditioning)
    student = build_model(cfg.student, card.num_classes, card.in_channels, card.image_size)
    ctx = InversionContext(teacher, student, generator, card.num_classes, cfg, torch.device("cpu"))
    method = build_method(cfg.base, ctx)
    every = max(1, args.syntheses // 10)
    points, start = [], time.perf_counter()
    for step in range(args.syntheses):
        ctx.epoch = step
        batch = method.synthesize()
        if (step + 1) % every == 0:
            assert batch.requested is not None
            point: dict[str, Any] = {"synthesis": step + 1, "seconds": time.perf_counter() - start}
            point |= label_statistics(batch.requested, batch.teacher_logits)
            point["bn_raw"] = batch.losses["bn"] / cfg.bn_weight if cfg.bn_weight else float("nan")
            if batch.features is not None:
                point |= manifold_metrics(batch.features, reference)
            points.append(point)
    return points


def summarise(runs: dict[str, list[list[dict[str, float]]]]) -> dict[str, Any]:
    table = {}
    for name, seeds in runs.items():
        last = [points[-1] for points in seeds]
        table[name] = {m: {"mean": statistics.fmean(p[m] for p in last),
                           "std": statistics.pstdev(p[m] for p in last)} for m in METRICS if m in last[0]}
        table[name]["seconds"] = {"mean": statistics.fmean(p["seconds"] for p in last), "std": 0.0}
    return table


def write_outputs(payload: dict[str, Any]) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.with_suffix(".json").write_text(json.dumps(payload, indent=2) + "\n")
    lines = [f"# Synthesis benchmark ({payload['date']})", "", f"Command: `{payload['command']}`", "",
             f"{payload['syntheses']} syntheses of {payload['batch_size']} images per run, {payload['seeds']} seeds "
             f"(mean +- std over seeds, last batch), base `{payload['base']}`, adversarial term off; "
             "precision/recall/coverage against 1000 real test images in teacher feature space.", "",
             "| variant | " + " | ".join(METRICS) + " | seconds |", "|---" * (len(METRICS) + 2) + "|"]
    for name, row in payload["summary"].items():
        cells = [f"{row[m]['mean']:.3f} +- {row[m]['std']:.3f}" if m in row else "n/a" for m in METRICS]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {row['seconds']['mean']:.0f} |")
    RESULTS.with_suffix(".md").write_text("\n".join(lines) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for name, seeds in payload["runs"].items():
        for ax, metric in zip(axes, ("agreement", "label_entropy", "coverage"), strict=True):
            xs = [p["synthesis"] for p in seeds[0]]
            values = torch.tensor([[p.get(metric, float("nan")) for p in points] for points in seeds])
            mean, std = values.mean(0), values.std(0, unbiased=False)
            ax.plot(xs, mean, label=name)
            ax.fill_between(xs, mean - std, mean + std, alpha=0.2)
            ax.set_title(metric)
            ax.set_xlabel("synthesize() calls")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(RESULTS.with_suffix(".png"), dpi=100)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = load_config()
    teacher, card = load_checkpoint(cfg.teacher.checkpoint)
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    test = load_dataset(card.dataset, "test").subset(range(1000))
    with torch.no_grad():
        reference = teacher(test.normalized(), return_features=True)[1].float()
    names = args.only or list(VARIANTS)
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        print(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}", file=sys.stderr)
        return 2
    runs: dict[str, list[list[dict[str, float]]]] = {}
    for name in names:
        runs[name] = []
        for seed in range(args.seeds):
            runs[name].append(run_variant(name, seed, args, teacher, card, reference))
            last = runs[name][-1][-1]
            print(f"{name} seed {seed}: agreement {last['agreement']:.3f} entropy {last['label_entropy']:.3f} "
                  f"coverage {last.get('coverage', float('nan')):.3f} ({last['seconds']:.0f} s)", flush=True)
    payload = {"date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
               "command": "python -m benchmarks.synthesis " + " ".join(argv if argv is not None else sys.argv[1:]),
               "machine": platform.platform(), "syntheses": args.syntheses, "seeds": args.seeds,
               "base": args.base or cfg.distill.base, "batch_size": cfg.distill.synthesis_batch_size,
               "runs": runs, "summary": summarise(runs)}
    write_outputs(payload)
    print(RESULTS.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
