"""The generative condensers against DM and GM at equal site time:
``python -m benchmarks.condensation.generative [--resume] [--only KEY ...]``.

Every method gets the same budget at the site: ``--site-seconds`` (default 110, the per-site budget of
the federated DM setting) of this process's CPU time (``condense.time_budget_clock=process``), so that other
jobs on the machine do not decide how much a method computes. A generator (d2m, gendd, dp-*) is
condensed once and IPC 1, 10 and 50 are drawn from it, as the server would; DM and GM condense IPC 10 with
the budget (iterations unbounded). Each payload's wire size, wall and CPU seconds are recorded. Evaluation
is the ConvNet protocol of ``evaluate.py`` (the same as ``python -m benchmarks.condensation``).
``--federated`` adds the union of 10 Dirichlet(0.5) sites.

Results go to ``benchmarks/results/condensation-generative.{json,md}`` (the image-method records in
``condensation.json`` are left alone); every finished case is written at once, ``--resume`` keeps them.
The federated union (``--federated``) gives every site the same CPU budget.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.condensation.evaluate import EvalConfig, epochs_for, evaluate_payload, test_subset
from benchmarks.condensation.report import read_records, write_json
from client.condense import condense
from shared.config.condense import CondenseConfig
from shared.data import LabeledImages, load_dataset, partition_indices
from shared.generator_payload import GeneratorPayload, checked_generator, draw_payload
from shared.io import atomic_write_text
from shared.payload import CondensedPayload

RESULTS = Path(__file__).resolve().parents[1] / "results" / "condensation-generative"
FMNIST_CPU: dict[str, Any] = {"model_width": 32, "batch_real": 64, "lr_img": 0.0, "threads": 1}
UNBOUNDED = 100_000  # iterations / GAN steps: the time budget decides
# (key, method, epsilon); generators are drawn at DRAWS images per class
CASES: list[tuple[str, str, float | None]] = [
    ("d2m", "d2m", None), ("gendd", "gendd", None), ("dm-ipc10", "dm", None),
    ("dp-d2m-eps10", "dp-d2m", 10.0), ("dp-gendd-eps10", "dp-gendd", 10.0), ("gm-ipc10", "gm", None),
]
DRAWS = (10, 1, 50)
GM_SETTINGS = {"outer_loop": 5, "inner_loop": 5}  # the condensation benchmark's CPU-sized gm schedule


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.condensation.generative", description=__doc__)
    parser.add_argument("--resume", action="store_true", help="keep finished cases of an earlier run")
    parser.add_argument("--only", nargs="*", default=None, help="case keys (gendd, d2m, dm-ipc10, ...)")
    parser.add_argument("--site-seconds", type=float, default=110.0,
                        help="condensation budget of every method, CPU seconds of this process")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="condense settings for the generative methods (e.g. gan_share=0.5)")
    parser.add_argument("--federated", action="store_true", help="also the 10-site Dirichlet(0.5) union (gendd)")
    parser.add_argument("--nets", type=int, default=3)
    parser.add_argument("--eval-samples", type=int, default=30_000)
    parser.add_argument("--test-size", type=int, default=0, help="0: the full test split")
    parser.add_argument("--work-dir", default="/tmp/condex-bench-generative")
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quiet", action="store_true")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    out, work = Path(args.out), Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    evaluation = EvalConfig(width=32, max_samples=args.eval_samples, nets=args.nets, test_size=args.test_size)
    train, test = load_dataset("fashion_mnist", "train"), load_dataset("fashion_mnist", "test")
    test_x, test_y = test_subset(test, evaluation.test_size)
    records = read_records(out.with_suffix(".json")) if args.resume else []
    header = _header(args, evaluation, len(test_y))
    done = {r["case"] for r in records}
    extra = _parse_sets(args.set)
    cases = [c for c in CASES if args.only is None or c[0] in args.only]
    if args.federated:
        cases.append(("federated-gendd", "gendd", None))
    for key, method, eps in cases:
        if key in done:
            continue
        start = time.perf_counter()
        planned = dp_plan(method, records) if eps else {}
        new = run_case(key, method, eps, args, extra | planned, train, (test_x, test_y), evaluation, work)
        records += new
        for r in new:
            print(f"{key} IPC {r['ipc']}: {100 * r['accuracy_mean']:.2f} ± {100 * r['accuracy_std']:.2f}, "
                  f"condense {r['seconds_per_client']:.1f} s, {r['payload_bytes']} bytes", flush=True)
        print(f"{key}: case {time.perf_counter() - start:.0f} s", flush=True)
        write_json(out.with_suffix(".json"), header, records)
        atomic_write_text(out.with_suffix(".md"), markdown(header, records))
    return 0


def dp_plan(method: str, records: list[dict[str, Any]]) -> dict[str, int]:
    """A DP run calibrates its noise for a planned number of steps, so it needs them up front: half the GAN
    steps and refinement iterations its non-DP method made in the same budget (a DP step costs more: per-record
    gradients of an expected q * N records), or the config defaults when that method has not run."""
    base = method.removeprefix("dp-")
    done = [r for r in records if r["method"] == base and r.get("gan_steps")]
    if not done:
        return {}
    return {"gan_steps": max(1, done[0]["gan_steps"] // 2), "iterations": max(1, done[0]["iterations"] // 2)}


def site_config(method: str, eps: float | None, seconds: float, extra: dict[str, Any], seed: int = 0) -> CondenseConfig:
    values: dict[str, Any] = {**FMNIST_CPU, "method": method, "ipc": 10, "epsilon": eps or 0.0, "seed": seed,
                              "time_budget_s": seconds, "time_budget_clock": "process", "iterations": UNBOUNDED}
    if method in ("gm", "dp-gm"):
        values |= GM_SETTINGS
    elif method not in ("dm", "dp-dm"):
        values |= {"gan_steps": UNBOUNDED, **extra}
    if eps and "iterations" not in extra:  # no non-DP run to plan from: the config's step counts
        defaults = CondenseConfig()
        values |= {"gan_steps": defaults.gan_steps, "iterations": 500}
    cfg = CondenseConfig(**values)
    cfg.validate()
    return cfg


def run_case(key: str, method: str, eps: float | None, args: argparse.Namespace, extra: dict[str, Any],
             train: LabeledImages, test: tuple[torch.Tensor, torch.Tensor], evaluation: EvalConfig,
             work: Path) -> list[dict[str, Any]]:
    if key.startswith("federated"):
        return [federated(key, method, args, extra, train, test, evaluation, work)]
    cfg = site_config(method, eps, args.site_seconds, extra)
    start, cpu = time.perf_counter(), time.process_time()
    payload = condense(train, cfg, progress=not args.quiet)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    payload.save(work / f"{key}.safetensors")
    base = {"case": key, "method": method, "setting": "centralized", "epsilon": eps,
            "seconds_per_client": round(seconds, 1), "cpu_seconds": round(cpu, 1),
            "payload_bytes": payload.wire_bytes(),
            "iterations": payload.meta.iterations, "gan_steps": payload.extra.get("gan_steps"),
            "site_budget_s": args.site_seconds}
    if payload.meta.epsilon is not None:
        base |= {"epsilon_reported": payload.meta.epsilon, "delta": payload.meta.delta,
                 "dp_steps": payload.meta.dp_steps, "noise_multiplier": payload.meta.noise_multiplier}
    draws = [(ipc, redraw(payload, ipc)) for ipc in DRAWS] if isinstance(payload, GeneratorPayload) \
        else [(payload.meta.ipc, payload)]
    return [base | {"ipc": ipc, "num_images": len(p), **accuracy(p, test, evaluation)} for ipc, p in draws]


def redraw(payload: GeneratorPayload, ipc: int) -> CondensedPayload:
    """What the server does with a generator payload: check it and draw ``ipc`` images per class."""
    released = payload.released()
    return draw_payload(checked_generator(released.meta, released.weights), released.weights, released.meta, ipc)


def accuracy(payload: CondensedPayload, test: tuple[torch.Tensor, torch.Tensor],
             evaluation: EvalConfig) -> dict[str, Any]:
    accuracies = evaluate_payload(payload, test[0], test[1], evaluation)
    mean = sum(accuracies) / len(accuracies)
    std = (sum((a - mean) ** 2 for a in accuracies) / len(accuracies)) ** 0.5
    return {"accuracy_mean": mean, "accuracy_std": std, "accuracies": accuracies,
            "eval_epochs": epochs_for(len(payload), evaluation)}


def federated(key: str, method: str, args: argparse.Namespace, extra: dict[str, Any], train: LabeledImages,
              test: tuple[torch.Tensor, torch.Tensor], evaluation: EvalConfig, work: Path) -> dict[str, Any]:
    """10 Dirichlet(0.5) sites condense their own classes (the site budget each); the server draws IPC 10 per
    site. ``seconds_per_client`` is the slowest site's CPU seconds here."""
    parts = partition_indices(train.labels.numpy(), 10, scheme="dirichlet", alpha=0.5, seed=0)
    drawn, seconds, sizes = [], [], []
    for site, index in enumerate(parts):
        start = time.process_time()
        payload = condense(train.subset(index), site_config(method, None, args.site_seconds, extra, seed=site),
                           progress=False)
        seconds.append(time.process_time() - start)
        sizes.append(payload.wire_bytes())
        payload.save(work / f"{key}-site{site}.safetensors")
        drawn.append(redraw(payload, 10))
    union = CondensedPayload(torch.cat([p.images for p in drawn]), torch.cat([p.labels for p in drawn]),
                             dataclasses.replace(drawn[0].meta, ipc=100))
    return {"case": key, "method": method, "setting": "federated", "epsilon": None, "ipc": 10,
            "num_images": len(union), "seconds_per_client": round(max(seconds), 1),
            "client_cpu_seconds": [round(s, 1) for s in seconds], "payload_bytes": max(sizes),
            "site_budget_s": args.site_seconds, **accuracy(union, test, evaluation)}


def _parse_sets(items: list[str]) -> dict[str, Any]:
    fields = {f.name: f for f in dataclasses.fields(CondenseConfig)}
    out: dict[str, Any] = {}
    for item in items:
        name, _, value = item.partition("=")
        kind = type(getattr(CondenseConfig(), name)) if name in fields else str
        out[name] = kind(value)
    return out


def _header(args: argparse.Namespace, evaluation: EvalConfig, test_size: int) -> dict[str, Any]:
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python -m benchmarks.condensation.generative " + shlex.join(sys.argv[1:]),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores (shared with other jobs), torch "
                   f"{torch.__version__}, {torch.get_num_threads()} threads",
        "protocol": (f"every method condenses on the 60,000 FMNIST training images within {args.site_seconds:g} CPU "
                     f"seconds (one thread) at the site; generators are drawn at IPC "
                     f"{', '.join(map(str, DRAWS))}; evaluation: a "
                     f"fresh ConvNet-3 (width {evaluation.width}) trained on the condensed set with DSA, "
                     f"min({evaluation.epochs}, {evaluation.max_samples} // images) epochs, tested on "
                     f"{test_size} test images, mean ± std over {evaluation.nets} nets"),
    }


def markdown(header: dict[str, Any], records: list[dict[str, Any]]) -> str:
    lines = ["# Generative condensation benchmark (Fashion-MNIST)", "", f"- date: {header['date']}",
             f"- command: `{header['command']}`", f"- machine: {header['machine']}",
             f"- protocol: {header['protocol']}", "",
             "| case | method | IPC | epsilon (target / reported) | test accuracy (mean ± std) | images | site wall s "
             "| site CPU s | payload bytes | GAN steps | iterations | eval epochs |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        eps = "-" if r["epsilon"] is None else f"{r['epsilon']:g} / {r.get('epsilon_reported', float('nan')):.3g}"
        lines.append(f"| {r['case']} | {r['method']} | {r['ipc']} | {eps} | {100 * r['accuracy_mean']:.2f} ± "
                     f"{100 * r['accuracy_std']:.2f} | {r['num_images']} | {r['seconds_per_client']:.1f} | "
                     f"{r.get('cpu_seconds', '-')} | "
                     f"{r['payload_bytes']} | {r.get('gan_steps') or '-'} | {r.get('iterations', '-')} | "
                     f"{r['eval_epochs']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
