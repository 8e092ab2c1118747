"""Poisoned sites against the server's screening (issue 13.4): ``python -m benchmarks.poisoning --clean DIR
[--attacks flip noise ood] [--hostile 3] [--unscreened ATTACK ...] [--seeds 3] [--budget-seconds 360]
[--workers 2] [--resume]``.

``--clean`` is a folder of honest site payloads (the default job's 10 Dirichlet-0.5 DM payloads). Every
condensed set the benchmark distils from is built as the ServerApp builds its own: each payload as the server
receives it (``released()``: the wire encoding, decoded), then ``screen_payloads`` with the default
``screen`` section (``server/screening.py``), and the kept samples written to a payload folder:

* ``clean``: the honest payloads, screened (the default pipeline without an attacker);
* ``ATTACK``: the first ``--hostile`` sites (by file name) replaced by ``benchmarks/poisoning/attacks.py``'s
  ``ATTACK``, screened;
* ``ATTACK-unscreened`` (``--unscreened``): the same poisoned payloads with screening off, to show what the
  attack costs without the filter.

Each distinct set (sets whose kept samples are identical, e.g. every attack whose hostile sites screening
rejects whole, are distilled once) is distilled with ``fast:mi*`` (the default engine) by the distillation benchmark
(``benchmarks/distillation``: one process per job, seeds 0..N-1, 1 thread each, the same wall-time budget),
into ``RESULTS/poisoning-distillation.{json,md,png}``. This module then writes ``RESULTS/poisoning.{json,md,png}``:
per set the screening outcome (sites rejected, samples kept) and the student's accuracy (mean +- std over
seeds), its loss against ``clean``, and the target: every screened attack within 1 point of ``clean``."""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import shlex
import shutil
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from torch import nn

from benchmarks.poisoning.attacks import attacks, poison
from shared.io import atomic_path, atomic_write_text

RESULTS = Path(__file__).resolve().parents[1] / "results"
TARGET_POINTS = 1.0
CASE = "fast:mi*"


@dataclass
class Server:
    """What the server holds for screening: its teacher and the configured ``screen`` section."""

    teacher: nn.Module
    card: Any  # shared.checkpoint.ModelCard
    screen: Any  # shared.config.screen.ScreenConfig

    @classmethod
    def load(cls, teacher_dir: str | None) -> Server:
        from shared.checkpoint import load_checkpoint
        from shared.config import load_config

        cfg = load_config()
        teacher, card = load_checkpoint(teacher_dir or cfg.teacher.checkpoint)
        return cls(teacher, card, cfg.screen)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.poisoning", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clean", required=True, type=Path, help="folder of honest site payloads (*.safetensors)")
    parser.add_argument("--attacks", nargs="+", default=["flip", "noise", "ood"], help="attacks from attacks.py")
    parser.add_argument("--unscreened", nargs="*", default=[], help="attacks also distilled without screening")
    parser.add_argument("--hostile", type=int, default=3, help="poisoned sites per attack (the first by name)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--budget-seconds", type=float, default=360.0, help="distillation wall time per job "
                        "(the default job's distill.budget_seconds)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--teacher", default=None, help="teacher checkpoint (default: teacher.checkpoint)")
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/condex-bench-poisoning"))
    parser.add_argument("--out", type=Path, default=RESULTS / "poisoning", help="results path without extension")
    parser.add_argument("--resume", action="store_true", help="keep finished (set, seed) jobs of an earlier run")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    unknown = [a for a in [*args.attacks, *args.unscreened] if a not in attacks]
    if unknown:
        parser.error(f"unknown attack(s) {unknown}; known: {attacks.names()}")
    if not sorted(args.clean.glob("*.safetensors")):
        parser.error(f"--clean {args.clean}: no *.safetensors payloads in this folder")
    return args


def plan_sets(args: argparse.Namespace) -> dict[str, tuple[str | None, bool]]:
    """Set name -> (attack or None, screened)."""
    sets: dict[str, tuple[str | None, bool]] = {"clean": (None, True)}
    sets |= {attack: (attack, True) for attack in args.attacks}
    return sets | {f"{attack}-unscreened": (attack, False) for attack in args.unscreened}


def build_set(name: str, attack: str | None, screened: bool, args: argparse.Namespace, server: Server
              ) -> dict[str, Any]:
    """Write the set's kept payloads to ``WORK/sets/NAME/`` (whole folder replaced at once) and describe it."""
    from server.screening import screen_payloads
    from shared.payload import CondensedPayload

    received = {p.name: CondensedPayload.load(p).released() for p in sorted(args.clean.glob("*.safetensors"))}
    hostile: list[str] = []
    if attack is not None:
        received, hostile = poison(received, attack, args.hostile)
    kept, report = screen_payloads(received, server.teacher, server.card, replace(server.screen, enabled=screened))
    folder = args.work_dir / "sets" / name
    staging = folder.with_name(f".{name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for file, payload in kept.items():
        payload.save(staging / file)
    shutil.rmtree(folder, ignore_errors=True)
    staging.rename(folder)
    sites = report.get("sites", {})
    return {
        "path": str(folder), "content": content_hash(kept), "attack": attack, "screened": screened,
        "hostile_sites": hostile,
        "sites": len(received), "samples_received": sum(len(p) for p in received.values()),
        "samples_kept": sum(len(p) for p in kept.values()),
        "rejected_sites": sorted(n for n, s in sites.items() if s.get("rejected")),
        "hostile_samples_kept": sum(len(kept[n]) for n in hostile if n in kept),
        "screening": report,
    }


def content_hash(payloads: dict[str, Any]) -> str:
    """SHA-256 over the kept images and labels of every site, in name order: equal sets distil alike."""
    digest = hashlib.sha256()
    for name in sorted(payloads):
        arrays = payloads[name].to_arrays()
        digest.update(name.encode() + arrays["images"].tobytes() + arrays["labels"].tobytes())
    return digest.hexdigest()


def same_as(sets: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Set -> the first set with the same kept samples (screening that rejects every hostile site leaves the
    same honest sites whatever the attack: those sets are distilled once)."""
    first: dict[str, str] = {}
    return {name: first.setdefault(info["content"], name) for name, info in sets.items()}


def distill_sets(sets: dict[str, dict[str, Any]], args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """Run the distillation benchmark on every distinct set (``same_as``); returns its results."""
    from benchmarks.distillation.__main__ import main as distillation_main

    alias = same_as(sets)
    sets = {name: info for name, info in sets.items() if alias[name] == name}

    argv = ["--condensed", sets["clean"]["path"], "--condensed-name", "clean", "--only", CASE,
            "--seeds", str(args.seeds), "--budget-seconds", str(args.budget_seconds), "--workers", str(args.workers),
            "--work-dir", str(args.work_dir / "distill"), "--out", str(out)]
    argv += [x for name, info in sets.items() if name != "clean" for x in ("--condensed-set", f"{name}={info['path']}")]
    argv += (["--resume"] if args.resume else []) + (["--quiet"] if args.quiet else [])
    if args.teacher:
        argv += ["--teacher", args.teacher]
    distillation_main(argv)
    return json.loads(out.with_suffix(".json").read_text(encoding="utf-8"))


def summarize(sets: dict[str, dict[str, Any]], distilled: dict[str, Any]) -> dict[str, Any]:
    """Per set: screening outcome, accuracy over seeds, points lost against ``clean``; the 1-point target."""
    accuracy = {c["condensed"]: c["accuracy"] for c in distilled["cases"] if c["case"] == CASE}
    clean = (accuracy.get("clean") or {}).get("mean")
    alias = same_as(sets)
    rows = {}
    for name, info in sets.items():
        acc = accuracy.get(alias[name]) or {}
        mean = acc.get("mean")
        lost = None if mean is None or clean is None else 100.0 * (clean - mean)
        rows[name] = {k: v for k, v in info.items() if k not in ("screening", "path")} | {
            "accuracy": acc, "points_lost": lost, "distilled_as": alias[name]}
    screened = [r["points_lost"] for n, r in rows.items() if n != "clean" and r["screened"]]
    met = None if not screened or None in screened else all(p <= TARGET_POINTS for p in screened)
    return {"sets": rows, "target": {"max_points_lost": TARGET_POINTS, "worst_screened": max(screened, default=None),
                                     "met": met}}


def _pct(acc: dict[str, Any]) -> str:
    if acc.get("mean") is None:
        return "-"
    std = f" ± {100 * acc['std']:.2f}" if acc.get("std") is not None else ""
    return f"{100 * acc['mean']:.2f}{std} (n={acc['n']})"


def write_markdown(path: Path, results: dict[str, Any]) -> None:
    lines = [f"# Poisoned sites against screening ({results['date']})", "", f"Command: `{results['command']}`", "",
             f"{results['hostile']} of the sites poisoned per attack; student `{CASE}`, "
             f"{results['budget_seconds']:.0f} s per job, {results['seeds']} seed(s); distillation records in "
             "`poisoning-distillation.json`.", "",
             "| set | screened | samples kept / received | sites rejected | hostile samples kept | student acc. (%) "
             "| points lost vs clean |", "|---|---|---|---|---|---|---|"]
    for name, r in results["sets"].items():
        lost = "-" if r["points_lost"] is None else f"{r['points_lost']:+.2f}"
        if r["distilled_as"] != name:
            lost += f" (same kept samples as {r['distilled_as']}: distilled once)"
        lines.append(f"| {name} | {'yes' if r['screened'] else 'no'} | {r['samples_kept']} / {r['samples_received']} "
                     f"| {', '.join(r['rejected_sites']) or '-'} | {r['hostile_samples_kept']} | {_pct(r['accuracy'])} "
                     f"| {lost} |")
    target = results["target"]
    verdict = {True: "met", False: "**missed**", None: "not measured"}[target["met"]]
    worst = "-" if target["worst_screened"] is None else f"{target['worst_screened']:.2f}"
    lines += ["", f"Target: every screened attack loses <= {target['max_points_lost']:.0f} point against clean: "
              f"worst {worst} points, {verdict}.", ""]
    atomic_write_text(path, "\n".join(lines))


def write_png(path: Path, results: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [(n, r) for n, r in results["sets"].items() if r["accuracy"].get("mean") is not None]
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(1.2 * len(rows) + 2, 3.5))
    means = [100 * r["accuracy"]["mean"] for _, r in rows]
    stds = [100 * (r["accuracy"].get("std") or 0.0) for _, r in rows]
    colors = ["tab:green" if n == "clean" else ("tab:blue" if r["screened"] else "tab:red") for n, r in rows]
    ax.bar([n for n, _ in rows], means, yerr=stds, color=colors, capsize=4)
    ax.set_ylim(max(0.0, min(means) - 10), min(100.0, max(means) + 5))
    ax.set_ylabel("student accuracy (%)")
    ax.set_title("poisoned sites: screened (blue), unscreened (red), clean (green)")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = "python -m benchmarks.poisoning " + shlex.join(argv if argv is not None else sys.argv[1:])
    server = Server.load(args.teacher)
    sets = {name: build_set(name, attack, screened, args, server)
            for name, (attack, screened) in plan_sets(args).items()}
    for name, info in sets.items():
        print(f"{name}: kept {info['samples_kept']} of {info['samples_received']} samples; rejected sites "
              f"{info['rejected_sites'] or 'none'}", flush=True)
    distilled = distill_sets(sets, args, args.out.with_name(args.out.name + "-distillation"))
    results = {"date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "command": command,
               "clean": str(args.clean), "hostile": args.hostile, "seeds": args.seeds,
               "budget_seconds": args.budget_seconds} | summarize(sets, distilled) | {
        "screening": {name: info["screening"] for name, info in sets.items()}}
    atomic_write_text(args.out.with_suffix(".json"), json.dumps(results, indent=2) + "\n")
    write_markdown(args.out.with_suffix(".md"), results)
    write_png(args.out.with_suffix(".png"), results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
