"""``condex condense``: condense one site's data (a whole split or one simulated partition) into a payload file.

    condex condense --dataset fashion_mnist --partition dirichlet --partition-id 3 --method dm --ipc 10
    condex condense --method dp-dm --epsilon 8 --output outputs/site.safetensors

Defaults come from the composed configuration (``configs/``, FMNIST-CPU setting); flags override them,
and ``--set section.key=value`` reaches any other knob. Writes the payload (safetensors + JSON metadata,
exactly what a Flower reply would carry: a DP payload has no class counts) and a PNG grid of the condensed
images beside it.

The site's privacy policy (``--policy-*``, the node-config keys of ``shared.config.policy``) is checked
before the data is read, again on the planned run and on the payload before it is written; with
``--policy-ledger`` the run is charged to the site's ledger first. Without flags, ``--dataset folder`` (a
site's own images) gets a deployed site's policy (DP only, epsilon <= 10 and delta <= 1e-5 per run) and a
registered (public) dataset a simulated site's (everything allowed). A ``folder`` dataset is normalised with
``--mean/--std`` (the teacher's), else with 0.5 / 0.5, never with statistics of its images.

``--teacher DIR`` reads the teacher's card (``DIR/card.json``, nothing else): its normalisation, and its class
names, which an ImageFolder site's folder names are mapped to (``Dress/`` is class 3 of Fashion-MNIST, ``7/``
class 7), so the payload's labels are the teacher's class ids whichever classes the site holds::

    condex condense --dataset folder --data-root site-a --teacher assets/teachers/fashion_mnist \
        --method dp-dm --epsilon 8 --output site-a.safetensors
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from client.policy import PolicyGuard
from client.task import with_public_stats
from shared.config import CondexConfig, apply_overrides, load_config
from shared.config.policy import DEPLOYED, KEYS, SIMULATED, SitePolicy, parse_policy
from shared.data import LabeledImages, few_shot_indices, load_dataset, partition_indices
from shared.data.sources import load_folder
from shared.errors import ConfigError
from shared.payload import CondensedPayload, PayloadSpec, validate_payload
from shared.privacy.notice import non_dp_warning
from shared.viz import save_class_grid

# flag -> config key; None-valued flags are left to the configuration
FLAG_KEYS = {
    "dataset": "data.dataset", "data_root": "data.data_root", "num_partitions": "data.num_partitions",
    "alpha": "data.alpha", "classes_per_partition": "data.classes_per_partition", "few_shot": "data.few_shot",
    "method": "condense.method", "ipc": "condense.ipc", "iterations": "condense.iterations",
    "epsilon": "condense.epsilon", "delta": "condense.delta", "noise_multiplier": "condense.noise_multiplier",
    "clip": "condense.clip", "init": "condense.init", "wire_dtype": "condense.wire_dtype",
    "time_budget": "condense.time_budget_s", "seed": "condense.seed", "device": "device",
}


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "condense", help="condense a site's images into a few (optionally DP) samples per class",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", help="registered dataset name (default from config)")
    data.add_argument("--data-root", help="where the dataset files live")
    data.add_argument("--partition", default="none", choices=("none", "iid", "dirichlet", "pathological"),
                      help="simulate one site of a partitioned split (none: the whole training split)")
    data.add_argument("--partition-id", type=int, default=0, help="which partition this site is")
    data.add_argument("--num-partitions", type=int)
    data.add_argument("--alpha", type=float, help="Dirichlet concentration")
    data.add_argument("--classes-per-partition", type=int)
    data.add_argument("--few-shot", type=int, help="keep only this many real samples per class")
    method = parser.add_argument_group("condensation")
    method.add_argument("--method", help="dm | gm | real | dp-dm | dp-dos | dp-gm | d2m | gendd | dp-d2m | dp-gendd")
    method.add_argument("--ipc", type=int, help="images per class")
    method.add_argument("--iterations", type=int)
    method.add_argument("--init", choices=("auto", "real", "noise"))
    method.add_argument("--epsilon", type=float, help="DP target epsilon (dp-* methods)")
    method.add_argument("--delta", type=float)
    method.add_argument("--noise-multiplier", type=float, help="fix the noise instead of calibrating to --epsilon")
    method.add_argument("--clip", type=float)
    method.add_argument("--wire-dtype", choices=("uint8", "float16"))
    method.add_argument("--time-budget", type=float, help="stop after this many seconds (0: none)")
    method.add_argument("--seed", type=int, help="seed of the non-DP randomness (dp-dm/dp-gm draw their sampling "
                        "and noise from OS entropy, whatever the seed)")
    method.add_argument("--device", help="auto | cpu | cuda[:N]")
    method.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="any config override, e.g. --set condense.batch_real=64 (repeatable)")
    method.add_argument("--mean", help="folder datasets: normalisation mean per channel, comma-separated (the "
                        "teacher's; default 0.5); never computed from the images")
    method.add_argument("--std", help="folder datasets: normalisation std per channel (the teacher's; default 0.5)")
    method.add_argument("--teacher", metavar="DIR", help="folder datasets: the teacher checkpoint whose card gives "
                        "the class names folders are mapped to and the normalisation (instead of --mean/--std)")
    policy = parser.add_argument_group(
        "site privacy policy", "bounds this site applies whatever the other flags ask (\"none\" = no bound); "
        "defaults: a deployed site's for --dataset folder, a simulated site's otherwise")
    for key, help_text in POLICY_HELP.items():
        policy.add_argument(f"--{key}", dest=KEYS[key], metavar="VALUE", help=help_text)
    out = parser.add_argument_group("output")
    out.add_argument("--output", default="outputs/condensed/payload.safetensors", help="payload file")
    out.add_argument("--png", help="image grid (default: the payload path with .png)")
    out.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(handler=run)


POLICY_HELP = {
    "policy-methods": "methods this site runs, comma-separated (default: all)",
    "policy-require-dp": "true: refuse non-DP methods (default: true for folder data)",
    "policy-max-epsilon": "largest epsilon per run (default: 10 for folder data)",
    "policy-max-delta": "largest delta per run (default: 1e-5 for folder data)",
    "policy-max-ipc": "most images per class (default: none)",
    "policy-lifetime-epsilon": "total epsilon over all runs in --policy-ledger (default: none)",
    "policy-lifetime-delta": "delta of the lifetime epsilon (default: 1e-5)",
    "policy-ledger": "the site's privacy ledger file (JSON; every released run is recorded)",
    "policy-evaluate": "answer evaluation requests (Flower only; default: true)",
}
assert set(POLICY_HELP) == set(KEYS)


def build_policy(args: argparse.Namespace, cfg: CondexConfig) -> SitePolicy:
    """The ``--policy-*`` flags over the defaults of a deployed (``folder``) or simulated site."""
    values = {key: getattr(args, name) for key, name in KEYS.items() if getattr(args, name, None) is not None}
    return parse_policy(values, DEPLOYED if cfg.data.dataset == "folder" else SIMULATED, spell="condex condense")


def teacher_card(args: argparse.Namespace) -> Any:
    """The ``--teacher`` checkpoint's model card (class names, normalisation), or None."""
    if args.teacher is None:
        return None
    from shared.checkpoint import CARD_FILE, ModelCard

    if args.mean is not None or args.std is not None:
        raise ConfigError("--teacher gives the normalisation already; leave out --mean/--std")
    from shared.paths import resolve_path

    return ModelCard.read(resolve_path(args.teacher, "--teacher", "pass the teacher checkpoint directory") / CARD_FILE)


def cli_stats(args: argparse.Namespace, card: Any = None) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    if card is not None:
        return tuple(card.mean), tuple(card.std)
    if (args.mean is None) != (args.std is None):
        raise ConfigError("--mean and --std go together (the teacher's normalisation, one value per channel)")
    if args.mean is None:
        return None
    try:
        mean, std = (tuple(float(v) for v in text.split(",")) for text in (args.mean, args.std))
    except ValueError:
        raise ConfigError(f"--mean={args.mean!r} / --std={args.std!r} must be comma-separated numbers") from None
    if len(mean) != len(std) or not all(np.isfinite(mean + std)) or min(std) <= 0:
        raise ConfigError(f"--mean={args.mean!r} / --std={args.std!r}: one finite value per channel each, std > 0")
    return mean, std


def build_config(args: argparse.Namespace) -> CondexConfig:
    cfg = load_config()
    overrides: dict[str, Any] = {key: getattr(args, flag) for flag, key in FLAG_KEYS.items()
                                 if getattr(args, flag, None) is not None}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item!r} must look like section.key=value")
        overrides[key] = value
    if args.partition != "none":
        overrides["data.partition"] = args.partition
    return apply_overrides(cfg, overrides).validate()


def site_data(cfg: CondexConfig, partition: str, partition_id: int,
              class_names: Sequence[str] = ()) -> LabeledImages:
    """The training split, or one partition of it, optionally reduced to ``data.few_shot`` per class; a
    ``folder`` dataset labelled by ``class_names`` (the teacher's) when given."""
    d = cfg.data
    if d.dataset == "folder":
        train = load_folder(Path(d.data_root).expanduser() if d.data_root else None, "train", class_names)
    else:
        train = load_dataset(d.dataset, "train", root=d.data_root or None, download=d.download)
    if partition != "none":
        if not 0 <= partition_id < d.num_partitions:
            raise ConfigError(f"--partition-id={partition_id} must be in 0..{d.num_partitions - 1}")
        parts = partition_indices(train.labels.numpy(), d.num_partitions, scheme=partition, alpha=d.alpha,
                                  classes_per_partition=d.classes_per_partition, seed=d.seed)
        train = train.subset(parts[partition_id])
    if d.few_shot > 0:
        train = train.subset(few_shot_indices(train.labels.numpy(), d.few_shot, seed=d.seed))
    return train


def run(args: argparse.Namespace) -> int:
    from client.condense import condense

    cfg = build_config(args)
    guard = PolicyGuard(build_policy(args, cfg))
    card = teacher_card(args)
    stats = cli_stats(args, card)
    guard.check_request(cfg.condense)
    data = site_data(cfg, args.partition, args.partition_id, card.class_names if card is not None else ())
    if card is not None:
        check_fits_teacher(data, card)
    if stats is not None or data.info.name == "folder":
        data = with_public_stats(data, stats)
    guard.check_plan(data, cfg.condense)
    if not cfg.condense.private:
        print(non_dp_warning(cfg.condense.method), file=sys.stderr)
    payload = condense(data, cfg.condense, progress=not args.quiet, device=cfg.device)
    info = data.info
    released = payload.released()  # what the file holds: a DP payload without class counts
    validate_payload(released, PayloadSpec(num_classes=info.num_classes, image_shape=info.shape,
                                           max_ipc=max(cfg.condense.ipc, 1), dataset=info.name))
    charge = guard.release(payload, note=f"condex condense --output {args.output}")
    path = payload.save(args.output)
    png = Path(args.png) if args.png else path.with_suffix(".png")
    save_class_grid(png, payload.images, payload.labels, info.num_classes)
    print(summary(payload, path, png))
    print(guard.policy.describe())
    if charge is not None and guard.ledger is not None:
        print(f"ledger {guard.ledger.path}: lifetime epsilon {charge.after:.4g} at delta "
              f"{guard.policy.lifetime_delta:g} after {charge.runs + 1} run(s)")
    return 0


def check_fits_teacher(data: LabeledImages, card: Any) -> None:
    """Refuse before condensing when the site's images cannot serve the teacher (channels, size, classes)."""
    info = data.info
    if (info.channels, *info.image_size) != (card.in_channels, card.image_size, card.image_size) or \
            info.num_classes > card.num_classes:
        raise ConfigError(f"--teacher {card.arch} expects {card.in_channels}x{card.image_size}x{card.image_size} "
                          f"images and {card.num_classes} classes, the site's data has {info.channels}x"
                          f"{info.image_size[0]}x{info.image_size[1]} and {info.num_classes}; resize or convert "
                          "the images first")


def summary(payload: CondensedPayload, path: Path, png: Path) -> str:
    meta = payload.meta
    held = int(np.count_nonzero(meta.local_class_counts))
    lines = [
        f"method {meta.method}: {len(payload)} images for {held} held classes (ipc {meta.ipc}) "
        f"from {sum(meta.local_class_counts)} local images in {meta.wall_time_s:.1f} s ({meta.iterations} iterations)",
    ]
    if meta.epsilon is not None:
        lines.append(f"privacy: ({meta.epsilon:.3g}, {meta.delta:g})-DP, {meta.accountant} accountant, "
                     f"noise multiplier "
                     f"{meta.noise_multiplier:.4g}, sample rate {meta.sample_rate:.4g}, {meta.dp_steps} steps, "
                     f"clip {meta.clip:g}; noise and sampling from {meta.noise_source} (not reproducible); the "
                     "file leaves out the class counts, sample rate and noise multiplier")
    lines.append(f"payload: {path}  grid: {png}")
    return "\n".join(lines)
