"""``condex audit``: how much does a payload (and optionally a student) reveal about the site's images?

    condex audit --payload outputs/site0.safetensors --dataset fashion_mnist --partition dirichlet \\
        --partition-id 0 --teacher assets/teachers/fashion_mnist --shadows 4 --output outputs/site0-audit.json

Members are the images the payload was condensed from, chosen by the same data options as ``condex
condense`` (``--dataset``, ``--partition``, ``--partition-id``, ``--data-root``, ``--set data.*=...``);
non-members are the dataset's test split (a ``folder`` site: its ``test`` split), class-matched to the
members. The audit measures nearest-neighbour memorisation (pixel space, and the teacher's penultimate
features with ``--teacher``), a distance-threshold membership attack and, with ``--shadows N``, a LiRA
attack whose shadow payloads are condensed with the payload's method (its IPC, init and epsilon; a
``--shadow-time-budget`` each, by default the payload's own condensing time) from random halves of the
candidates. ``--student DIR`` adds a loss-threshold attack on that student and, with ``--student-shadows``,
a LiRA attack whose shadow students (the student's architecture) are trained on shadow payloads: a proxy
of the server's pipeline, which also inverts the teacher (docs/privacy.md, "Audit").

Writes ``--output`` (JSON) and a Markdown summary beside it, atomically, and prints the figures. With
``--policy-max-mia-auc`` / ``--policy-max-memorization`` it exits with an error (code 2) when the payload
exceeds them, as a site with that policy would refuse to send it. Shadows are never sent and are not
charged to any privacy ledger."""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from client.condense.cli import build_config, site_data
from client.task import with_public_stats
from shared.config import CondexConfig, apply_overrides
from shared.config.policy import AUDIT_KEYS, SIMULATED, parse_policy
from shared.data import LabeledImages, load_dataset
from shared.data.sources import load_folder
from shared.errors import ConfigError
from shared.payload import CondensedPayload
from shared.privacy.audit import AuditReport, AuditSettings, audit_payload, audit_student, teacher_embedding
from shared.progress import progress_bar


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "audit", help="measure what a payload (and a student) reveals about the site's images",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--payload", required=True, help="the payload file (condex condense --output)")
    data = parser.add_argument_group("the site's data (as for condex condense)")
    data.add_argument("--dataset", help="registered dataset name (default from config)")
    data.add_argument("--data-root", help="where the dataset files live")
    data.add_argument("--partition", default="none", choices=("none", "iid", "dirichlet", "pathological"))
    data.add_argument("--partition-id", type=int, default=0)
    data.add_argument("--num-partitions", type=int)
    data.add_argument("--alpha", type=float, help="Dirichlet concentration")
    data.add_argument("--classes-per-partition", type=int)
    data.add_argument("--few-shot", type=int, help="keep only this many real samples per class")
    data.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="any config override (also the shadows' condense.* settings), repeatable")
    attack = parser.add_argument_group("attacks")
    attack.add_argument("--teacher", metavar="DIR", help="teacher checkpoint: also measure in its feature space")
    attack.add_argument("--shadows", type=int, default=0, help="shadow payloads for LiRA (even; 0: no LiRA)")
    attack.add_argument("--shadow-time-budget", type=float,
                        help="seconds per shadow payload (default: the payload's own condensing time)")
    attack.add_argument("--student", metavar="DIR", help="student checkpoint to attack (loss threshold)")
    attack.add_argument("--student-shadows", type=int, default=0, help="shadow students for LiRA (even; 0: none)")
    attack.add_argument("--student-shadow-epochs", type=int, default=30, help="epochs per shadow student")
    attack.add_argument("--max-candidates", type=int, default=2000, help="members (and non-members) attacked")
    attack.add_argument("--seed", type=int, default=0, help="candidate sampling and shadow halves")
    attack.add_argument("--device", default="cpu", help="cpu | cuda[:N] for shadows and models")
    policy = parser.add_argument_group("site policy thresholds")
    for key, help_text in AUDIT_HELP.items():
        policy.add_argument(f"--{key}", dest=AUDIT_KEYS[key], metavar="VALUE", help=help_text)
    out = parser.add_argument_group("output")
    out.add_argument("--output", default="outputs/audit/audit.json", help="JSON report (Markdown beside it)")
    out.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(handler=run)


AUDIT_HELP = {
    "policy-max-mia-auc": "fail when the strongest payload attack's AUC exceeds this (default: none)",
    "policy-max-memorization": "fail when a larger share of payload images is closer to a training image than "
                               "95%% of test images are (default: none)",
}
assert set(AUDIT_HELP) == set(AUDIT_KEYS)


# ---- the site's data -----------------------------------------------------------------------------------
def load_site(args: argparse.Namespace, payload: CondensedPayload) -> tuple[CondexConfig, LabeledImages,
                                                                             LabeledImages]:
    """(config, members, non-members): the partition the payload came from and the held-out split."""
    cfg = build_config(args)
    names = tuple(payload.meta.class_names or ())
    members = site_data(cfg, args.partition, args.partition_id, names)
    d = cfg.data
    if d.dataset == "folder":
        non_members = load_folder(Path(d.data_root).expanduser() if d.data_root else None, "test", names)
        stats = (tuple(payload.meta.mean), tuple(payload.meta.std))
        members, non_members = with_public_stats(members, stats), with_public_stats(non_members, stats)
    else:
        non_members = load_dataset(d.dataset, "test", root=d.data_root or None, download=d.download)
    check_payload_fits(payload, members)
    return cfg, members, non_members


def check_payload_fits(payload: CondensedPayload, members: LabeledImages) -> None:
    meta, info = payload.meta, members.info
    if info.name != "folder" and meta.dataset != info.name:
        raise ConfigError(f"--payload is a {meta.dataset!r} payload but --dataset is {info.name!r}; audit it "
                          "against the data it was condensed from")
    if tuple(meta.image_shape) != tuple(info.shape):
        raise ConfigError(f"--payload images are {meta.image_shape}, the site's images {info.shape}")


# ---- shadows -------------------------------------------------------------------------------------------
def shadow_config(cfg: CondexConfig, payload: CondensedPayload, budget: float | None) -> Any:
    """The payload's condensation setting (method, IPC, init, epsilon and delta) over the configuration."""
    meta = payload.meta
    values: dict[str, Any] = {"condense.method": meta.method, "condense.ipc": meta.ipc,
                              "condense.time_budget_s": budget if budget is not None else max(meta.wall_time_s, 1.0)}
    if meta.init in ("real", "noise"):
        values["condense.init"] = meta.init
    if meta.epsilon is not None:  # recalibrated to the shadow's own records, as the site's run was
        values |= {"condense.epsilon": meta.epsilon, "condense.delta": meta.delta, "condense.noise_multiplier": 0.0}
    return apply_overrides(dataclasses.replace(cfg), values).validate().condense


class ShadowCondenser:
    """Condense a half of the candidates like the payload was; cached by content, so the student's shadows
    reuse the payload's shadows for the same halves. ``made`` lists the shadow payloads (for the report)."""

    def __init__(self, condense_cfg: Any, device: str) -> None:
        self.cfg, self.device = condense_cfg, device
        self.cache: dict[str, CondensedPayload] = {}

    def __call__(self, half: LabeledImages, index: int) -> CondensedPayload:
        from client.condense import condense

        key = hashlib.sha256(half.images.numpy().tobytes() + half.labels.numpy().tobytes()).hexdigest()
        if key not in self.cache:
            cfg = dataclasses.replace(self.cfg, seed=self.cfg.seed + 1 + index)
            self.cache[key] = condense(half, cfg, progress=False, device=self.device)
        return self.cache[key]

    def summary(self) -> dict[str, Any]:
        made = list(self.cache.values())
        return {"shadow_iterations": [p.meta.iterations for p in made],
                "shadow_seconds": [round(p.meta.wall_time_s, 1) for p in made],
                "shadow_time_budget_s": self.cfg.time_budget_s}


def shadow_student_trainer(card: Any, condense: Callable[[LabeledImages, int], CondensedPayload], epochs: int,
                           device: str) -> Callable[[LabeledImages, int], torch.nn.Module]:
    """A shadow student: the student's architecture trained (cross-entropy) on a shadow payload."""
    from shared.checkpoint import build_from_card
    from shared.train import train_classifier

    def run(half: LabeledImages, index: int) -> torch.nn.Module:
        shadow_payload = condense(half, index)
        info = dataclasses.replace(half.info, mean=tuple(card.mean), std=tuple(card.std))
        pixels = torch.round(shadow_payload.images.detach().cpu().float() * 255).clamp(0, 255).to(torch.uint8)
        shadow = LabeledImages(pixels, shadow_payload.labels.cpu(), info)
        torch.manual_seed(index)  # the shadow's initial weights
        model = build_from_card(card)
        train_classifier(model, shadow, None, epochs, batch_size=min(128, len(shadow)), device=device,
                         progress=False, seed=index)
        return model.eval().cpu()

    return run


# ---- the command ---------------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> int:
    policy = parse_policy({k: getattr(args, n) for k, n in AUDIT_KEYS.items() if getattr(args, n, None) is not None},
                          SIMULATED, spell="condex audit")
    settings = AuditSettings(args.shadows, args.max_candidates, args.seed).validate()
    student_settings = AuditSettings(args.student_shadows, args.max_candidates, args.seed).validate()
    if args.student_shadows and args.student is None:
        raise ConfigError("--student-shadows needs --student DIR (the student to attack)")
    if args.student_shadow_epochs < 1:
        raise ConfigError(f"--student-shadow-epochs={args.student_shadow_epochs} must be >= 1")
    if args.shadow_time_budget is not None and not args.shadow_time_budget > 0:
        raise ConfigError(f"--shadow-time-budget={args.shadow_time_budget} must be > 0 seconds (leave it out for "
                          "the payload's own condensing time)")
    payload = CondensedPayload.load(args.payload)
    cfg, members, non_members = load_site(args, payload)
    embed = load_teacher(args.teacher, members) if args.teacher else None
    need_shadows = args.shadows or args.student_shadows
    condense = ShadowCondenser(shadow_config(cfg, payload, args.shadow_time_budget), args.device) \
        if need_shadows else None
    steps = (2 if embed else 1) + args.shadows * (1 if condense else 0) + args.student_shadows
    with progress_bar(steps, "audit", enabled=not args.quiet) as bar:
        images_of = (lambda half, i: condense(half, i).images.detach().cpu().float()) if condense else None
        report = audit_payload(payload.images, members, non_members, settings, embed, images_of,
                               subject=payload_subject(payload, args.payload), tick=bar.advance)
        if args.student:
            report = attack_student(args, report, members, non_members, student_settings, condense, bar.advance)
    report.command = "condex audit " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["audit"] else report.command
    report.site["source"] = describe_site(args, cfg)
    if condense is not None:
        report.settings |= condense.summary()
    json_path, md_path = report.write(args.output)
    print(report.to_markdown())
    print(f"audit: {json_path}  summary: {md_path}")
    policy.check_audit(report.max_auc, report.max_share)
    return 0


def load_teacher(directory: str, members: LabeledImages) -> Any:
    from shared.checkpoint import load_checkpoint

    model, card = load_checkpoint(directory)
    if (card.in_channels, card.image_size, card.image_size) != tuple(members.info.shape):
        raise ConfigError(f"--teacher {directory} takes {card.in_channels}x{card.image_size}x{card.image_size} "
                          f"images, the site's are {members.info.shape}")
    return teacher_embedding(model, tuple(card.mean), tuple(card.std))


def attack_student(args: argparse.Namespace, report: AuditReport, members: LabeledImages,
                   non_members: LabeledImages, settings: AuditSettings, condense: Any, tick: Any) -> AuditReport:
    from shared.checkpoint import load_checkpoint

    model, card = load_checkpoint(args.student)
    trainer = shadow_student_trainer(card, condense, args.student_shadow_epochs, args.device) \
        if settings.shadows and condense is not None else None
    report.subject["student"] = f"{card.arch} ({args.student})"
    return audit_student(model, tuple(card.mean), tuple(card.std), members, non_members, settings, trainer,
                         report, tick)


def payload_subject(payload: CondensedPayload, path: str) -> dict[str, Any]:
    meta = payload.meta
    subject: dict[str, Any] = {"payload": path, "method": meta.method, "ipc": meta.ipc, "images": len(payload),
                               "iterations": meta.iterations}
    if meta.epsilon is not None:
        subject |= {"epsilon": meta.epsilon, "delta": meta.delta}
    return subject


def describe_site(args: argparse.Namespace, cfg: CondexConfig) -> str:
    part = "" if args.partition == "none" else f" partition {args.partition_id}/{cfg.data.num_partitions} " \
        f"({args.partition})"
    return f"{cfg.data.dataset}{part}; non-members: its test split"
