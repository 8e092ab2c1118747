"""The server's teacher: train one on a registry dataset, re-evaluate a checkpoint, or import a user's own
model (TorchScript, a zoo architecture, or a torchvision / timm architecture + state dict) into the checkpoint
format of ``shared.checkpoint``.

CLI: ``condex teacher train|eval|import``. Every checkpoint written here carries the test accuracy
measured on the dataset's real test split and the command that reproduces it. An import whose measured
accuracy is below ``--min-accuracy`` (default: twice chance, ``CHANCE_FACTOR / num_classes``) is refused
unless ``--force``, and one below ``WARN_ACCURACY`` gets a warning: a teacher that does not know the data
(wrong weights, normalisation, input stem or class order) inverts into noise."""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from shared.checkpoint import (
    ModelCard,
    ScriptedClassifier,
    card_for_dataset,
    load_checkpoint,
    load_scripted,
    load_state_dict_checked,
    save_checkpoint,
)
from shared.config.teacher import TeacherConfig, format_arch_kwargs, parse_arch_kwargs
from shared.data import DatasetInfo, LabeledImages, get_dataset_info, load_dataset
from shared.device import prepare_model, seed_everything, select_device
from shared.errors import CheckpointError, ConfigError, DataError
from shared.train import TrainHistory, evaluate, train_classifier

CHANCE_FACTOR = 2.0  # default --min-accuracy: twice chance (a model this close to chance is broken, not weak)
WARN_ACCURACY = 0.5  # below this fraction an accepted import still gets a warning


@dataclass
class DataOptions:
    """Where the data comes from and how much of it a (quick) run uses."""

    dataset: str = "fashion_mnist"
    root: str | None = None
    download: bool = True
    limit_train: int | None = None  # None: the whole split
    limit_test: int | None = None
    seed: int = 0


@dataclass
class TeacherRun:
    model: nn.Module
    card: ModelCard
    history: TrainHistory


@dataclass
class TeacherEvaluation:
    accuracy: float
    card_accuracy: float | None
    num_images: int
    dataset: str

    @property
    def difference_points(self) -> float | None:
        if self.card_accuracy is None:
            return None
        return round(100.0 * (self.accuracy - self.card_accuracy), 4) + 0.0  # + 0.0: no "-0.00" in reports


def load_split(data: DataOptions, split: str) -> LabeledImages:
    """Load a split, keeping a seeded random subset of ``limit_*`` images when asked (quick runs, tests)."""
    images = load_dataset(data.dataset, split, data.root, data.download)
    limit = data.limit_train if split == "train" else data.limit_test
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise DataError(f"--limit-{split}={limit!r} must be a positive number of images (omit it for the whole split)")
    if limit is not None and limit < len(images):
        order = np.random.default_rng(data.seed).permutation(len(images))[:limit]
        images = images.subset(np.sort(order))
    return images


def machine_description() -> str:
    return (f"{platform.machine()} {platform.system()}, {os.cpu_count()} CPUs, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads)")


def train_command(cfg: TeacherConfig, data: DataOptions, out: Path, device: str) -> str:
    """The full command that reproduces a training run (every value explicit, so defaults may change)."""
    parts = ["condex", "teacher", "train", "--dataset", data.dataset, "--arch", cfg.arch,
             "--arch-kwargs", cfg.arch_kwargs, "--epochs", str(cfg.epochs), "--batch-size", str(cfg.batch_size),
             "--lr", str(cfg.lr), "--momentum", str(cfg.momentum), "--weight-decay", str(cfg.weight_decay),
             "--schedule", cfg.schedule, "--augment", cfg.augment, "--label-smoothing", str(cfg.label_smoothing),
             "--seed", str(data.seed), "--device", device, "--out", str(out)]
    if data.root:
        parts += ["--data-root", data.root]
    if data.limit_train is not None:
        parts += ["--limit-train", str(data.limit_train)]
    if data.limit_test is not None:
        parts += ["--limit-test", str(data.limit_test)]
    return shlex.join(parts)


def train_teacher(cfg: TeacherConfig, data: DataOptions, out: str | Path, device: str = "auto",
                  progress: bool = True, note: str = "") -> TeacherRun:
    """Train ``cfg.arch`` on ``data``, measure it on the real test split and save checkpoint + card to ``out``."""
    from shared.models import build_model

    cfg.validate()
    out = Path(out)
    dev = select_device(device)
    seed_everything(data.seed)
    train, test = load_split(data, "train"), load_split(data, "test")
    info = train.info
    model = prepare_model(build_model(cfg.arch, num_classes=info.num_classes, in_channels=info.channels,
                                      image_size=info.image_size, **cfg.kwargs()), dev)
    start = time.perf_counter()
    history = train_classifier(
        model, train, None, epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, momentum=cfg.momentum,
        weight_decay=cfg.weight_decay, schedule=cfg.schedule, label_smoothing=cfg.label_smoothing,
        augment=cfg.augment, device=dev, progress=progress, seed=data.seed,
    )
    wall = time.perf_counter() - start
    accuracy = evaluate(model, test, dev, stats=(info.mean, info.std))
    provenance = {
        "source": "condex teacher train", "train_images": len(train), "test_images": len(test),
        "train_seconds": round(wall, 1), "machine": machine_description(),
        "history": [{"epoch": e.epoch, "loss": round(e.loss, 4), "train_accuracy": round(e.train_accuracy, 4)}
                    for e in history.epochs],
        "config": asdict(cfg),
    }
    if note:
        provenance["note"] = note
    card = card_for_dataset(info, cfg.arch, cfg.kwargs(), test_accuracy=round(accuracy, 5), seed=data.seed,
                            command=train_command(cfg, data, out, device), role="teacher", provenance=provenance)
    save_checkpoint(out, model, card)
    return TeacherRun(model, card, history)


def evaluate_teacher(checkpoint: str | Path, data: DataOptions | None = None, device: str = "auto",
                     expect_dataset: str | None = None) -> TeacherEvaluation:
    """Re-measure a checkpoint on its dataset's real test split (``data.dataset`` is taken from the card)."""
    dev = select_device(device)
    model, card = load_checkpoint(checkpoint, expect_dataset=expect_dataset, device=dev)
    data = replace(data or DataOptions(), dataset=card.dataset)
    test = load_split(data, "test")
    _check_geometry(card, test.info, str(checkpoint))
    accuracy = evaluate(model, test, dev, stats=(tuple(card.mean), tuple(card.std)))
    return TeacherEvaluation(accuracy, card.test_accuracy, len(test), card.dataset)


def _check_geometry(card: ModelCard, info: DatasetInfo, source: str) -> None:
    """The dataset name can match while a user's ``folder`` data has another shape; say so plainly."""
    if (card.in_channels, card.image_size, card.num_classes) != (info.channels, info.image_size[0], info.num_classes):
        raise CheckpointError(
            f"checkpoint {source} expects {card.in_channels}x{card.image_size}x{card.image_size} images and "
            f"{card.num_classes} classes, but dataset {info.name} has {info.channels}x{info.image_size[0]}x"
            f"{info.image_size[1]} and {info.num_classes} classes"
        )


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or a torch ``.pt``/``.pth`` file (weights only, never pickled code).

    Common wrappers are unpacked: ``{"state_dict": ...}``/``{"model": ...}`` and DataParallel's ``module.``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file {path} does not exist; pass --weights FILE (.pt, .pth or .safetensors)")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # safetensors/pickle/zip raise many types; all mean an unreadable file
        raise CheckpointError(f"weights file {path} cannot be read as a state dict ({exc})") from None
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"weights file {path} holds no state dict of tensors (got {type(state).__name__})")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _import_data_info(data: DataOptions) -> tuple[DatasetInfo, LabeledImages | None]:
    """The dataset's info and test split; without the data, the registry's info (not for ``folder``)."""
    try:
        test = load_split(data, "test")
        return test.info, test
    except DataError as exc:
        if data.dataset == "folder":
            raise CheckpointError(f"importing a teacher for dataset 'folder' needs the data to learn its shape: "
                                  f"{exc}") from None
        print(f"note: test split of {data.dataset} unavailable ({exc}); the card's test_accuracy stays empty")
        return get_dataset_info(data.dataset), None


def import_teacher(out: str | Path, data: DataOptions, *, torchscript: str | Path | None = None,
                   arch: str | None = None, arch_kwargs: dict[str, Any] | None = None,
                   weights: str | Path | None = None, evaluate_now: bool = True, device: str = "auto",
                   role: str = "teacher", command: str = "", stats: tuple[list[float], list[float]] | None = None,
                   min_accuracy: float | None = None, force: bool = False) -> tuple[nn.Module, ModelCard]:
    """Wrap a user's model into a checkpoint: ``torchscript`` file, or ``arch`` (zoo name, ``torchvision:NAME``
    or ``timm:NAME``) + ``weights``. ``stats``: the normalisation the model was trained with (default: the
    dataset's); the measured accuracy must reach ``min_accuracy`` (default: twice chance) unless ``force``."""
    if (torchscript is None) == (arch is None):
        raise CheckpointError("pass exactly one of --torchscript FILE, --arch NAME, --torchvision NAME or --timm NAME "
                              "(the last three with --weights FILE)")
    if arch is not None and weights is None:
        raise CheckpointError(f"--arch {arch} needs --weights FILE (a state dict, .pt or .safetensors)")
    info, test = _import_data_info(data)
    if stats is not None:
        info = _with_stats(info, stats)
    if torchscript is not None:
        card = card_for_dataset(info, "torchscript", {}, role=role, format="torchscript", command=command)
        model = _import_torchscript(Path(torchscript), card)
        card.provenance = {"source": "condex teacher import", "torchscript": str(torchscript),
                           "returns_features": model.returns_features, "bn_hooks": False}
    else:
        from shared.models import build_model

        assert arch is not None and weights is not None
        model = build_model(arch, num_classes=info.num_classes, in_channels=info.channels,
                            image_size=info.image_size, **(arch_kwargs or {}))
        from shared.models.external import is_external

        kwargs = dict(model.arch_kwargs) if is_external(arch) else dict(arch_kwargs or {})  # external: resolved adapt
        card = card_for_dataset(info, arch, kwargs, role=role, command=command,
                                provenance={"source": "condex teacher import", "weights": str(weights)})
        state = read_state_dict(weights)
        if is_external(arch):  # the library's own module, with its own key names (conv1.weight, fc.weight ...)
            if state and all(k.startswith("net.") for k in state):  # saved from condex's wrapper
                state = {k[len("net."):]: v for k, v in state.items()}
            load_weights(model.net, state, str(weights), arch)
        else:
            load_weights(model, state, str(weights), arch)
    card.provenance["normalisation"] = "declared" if stats is not None else f"dataset {info.name}"
    dev = select_device(device)
    model = model.to(dev).eval()
    if evaluate_now and test is not None:
        card.test_accuracy = round(evaluate(model, test, dev, stats=(info.mean, info.std)), 5)
        card.provenance["test_images"] = len(test)
        check_accuracy(card, min_accuracy, force)
    save_checkpoint(out, model.cpu(), card)
    return model, card


def _with_stats(info: DatasetInfo, stats: tuple[list[float], list[float]]) -> DatasetInfo:
    mean, std = stats
    if len(mean) != info.channels or len(std) != info.channels or min(std) <= 0:
        raise ConfigError(f"--mean {mean} / --std {std}: one value per channel ({info.channels} for {info.name}), "
                          "std > 0")
    return replace(info, mean=tuple(mean), std=tuple(std))


def check_accuracy(card: ModelCard, min_accuracy: float | None, force: bool) -> None:
    """Refuse (or, with ``force``, warn loudly about) a teacher whose measured accuracy is below ``min_accuracy``
    (default: twice chance); warn about one below ``WARN_ACCURACY``."""
    acc = card.test_accuracy
    chance = 1.0 / card.num_classes
    floor = CHANCE_FACTOR * chance if min_accuracy is None else min_accuracy
    if acc is None or acc >= WARN_ACCURACY:
        return
    problem = (f"the imported model scores {100 * acc:.2f}% on the {card.dataset} test split (chance "
               f"{100 * chance:.1f}%, --min-accuracy {100 * floor:.1f}%); check the weights, the "
               f"normalisation (--mean/--std, now {card.mean}/{card.std}), the input adaptation and the class order "
               f"({', '.join(card.class_names) or 'ids 0..' + str(card.num_classes - 1)})")
    if acc >= floor:
        print(f"WARNING: {problem}. A weak teacher gives a weak student.")
        return
    if not force:
        raise CheckpointError(f"{problem}; pass --force to import it anyway")
    card.provenance["low_accuracy_forced"] = True
    print(f"WARNING: {problem}. Imported anyway (--force): distillation from it will be poor.")


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], source: str, arch: str) -> None:
    """Load ``state`` strictly; on a mismatch say which keys differ and what most likely causes it."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if not (missing or unexpected or wrong):
        load_state_dict_checked(model, state, source, arch)
        return
    parts = [f"{label} ({len(keys)}): {', '.join(keys[:8])}{' ...' if len(keys) > 8 else ''}"
             for label, keys in (("missing", missing), ("unexpected", unexpected),
                                 ("shape mismatch", [f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}"
                                                     for k in wrong])) if keys]
    hint = _mismatch_hint(arch, state, wrong)
    raise CheckpointError(f"weights in {source} do not fit arch {arch}: {'; '.join(parts)}. {hint}")


def _mismatch_hint(arch: str, state: dict[str, torch.Tensor], wrong: list[str]) -> str:
    """The likeliest cause of a key mismatch, from the key names."""
    from shared.models.external import is_external

    torchvision_like = any(k.startswith(("conv1.", "layer1.", "fc.", "features.0.", "classifier.1.")) for k in state)
    if not is_external(arch) and torchvision_like:
        return (f"The keys look like a torchvision model: import it with --torchvision NAME (e.g. resnet18, "
                f"mobilenet_v2), not the zoo's --arch {arch}")
    if is_external(arch) and any(k.startswith(("conv1.", "features.0.0.")) for k in wrong):
        return ("The first convolution differs: set --adapt to the stem the model was trained with (small: 3x3 "
                "stride 1 for small images, none: the ImageNet stem; see docs/teacher.md)")
    if any(k.endswith(("fc.weight", "classifier.1.weight", "head.weight", "head.bias", "fc.bias")) for k in wrong):
        return "The classifier's output size differs: the model was trained for another number of classes"
    if is_external(arch):
        return f"The state dict is not of {arch}: check the architecture name"
    return "Check --arch and --arch-kwargs (e.g. width) against the model the weights came from"


def _import_torchscript(path: Path, card: ModelCard) -> ScriptedClassifier:
    if not path.is_file():
        raise CheckpointError(f"TorchScript file {path} does not exist; pass --torchscript FILE")
    return load_scripted(path, card)


# ---------------------------------------------------------------------------------------------- CLI


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    teacher = subparsers.add_parser(
        "teacher", help="train, evaluate or import the server's teacher model",
        description="The teacher is the pretrained model the server inverts and distils from. A checkpoint is "
                    "a directory with model.safetensors (or model.torchscript.pt) and card.json.",
    )
    actions = teacher.add_subparsers(dest="teacher_command", metavar="ACTION", required=True)
    _add_train(actions)
    _add_eval(actions)
    _add_import(actions)


def _data_arguments(parser: argparse.ArgumentParser, dataset_default: str | None) -> None:
    parser.add_argument("--dataset", default=dataset_default,
                        help="registry dataset (default: data.dataset of the composed config)"
                        if dataset_default is None else f"registry dataset (default: {dataset_default})")
    parser.add_argument("--data-root", default=None, help="folder holding the dataset files (default: built-in)")
    parser.add_argument("--no-download", action="store_true", help="never download dataset files")
    parser.add_argument("--limit-test", type=int, default=None, metavar="N",
                        help="evaluate on a seeded random N-image subset of the test split (quick checks)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N] (default: auto)")


def _add_train(actions: argparse._SubParsersAction) -> None:
    p = actions.add_parser("train", help="train a teacher and write checkpoint + card",
                           description="Train a teacher on a registry dataset. Unset options come from the "
                                       "composed config (configs/, section teacher).")
    _data_arguments(p, None)
    p.add_argument("--setting", default=None, help="configs/setting/NAME.yaml whose teacher section and dataset are "
                   "the defaults (default: fmnist_cpu; e.g. cifar10_gpu: ResNet-34 on CIFAR-10)")
    p.add_argument("--out", default=None, help="checkpoint directory (default: outputs/teachers/DATASET)")
    p.add_argument("--arch", default=None, help="zoo architecture, e.g. vgg11, resnet8")
    p.add_argument("--arch-kwargs", default=None, metavar="K=V,...", help="architecture options, e.g. width=16")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None, help="peak learning rate")
    p.add_argument("--momentum", type=float, default=None)
    p.add_argument("--weight-decay", type=float, default=None)
    p.add_argument("--schedule", default=None, help="onecycle, cosine or constant")
    p.add_argument("--augment", default=None, help="auto, none, crop or crop_flip")
    p.add_argument("--label-smoothing", type=float, default=None)
    p.add_argument("--limit-train", type=int, default=None, metavar="N", help="train on a seeded N-image subset")
    p.add_argument("--note", default="", help="free text stored in the card's provenance (e.g. the machine)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=_cli_train)


def _add_eval(actions: argparse._SubParsersAction) -> None:
    p = actions.add_parser("eval", help="re-measure a checkpoint on the real test split and compare with its card")
    p.add_argument("--checkpoint", default=None, help="checkpoint directory (default: teacher.checkpoint)")
    _data_arguments(p, None)
    p.add_argument("--tolerance", type=float, default=None, metavar="POINTS",
                   help="exit with status 1 when fresh and card accuracy differ by more than POINTS")
    p.set_defaults(handler=_cli_eval)


def _add_import(actions: argparse._SubParsersAction) -> None:
    p = actions.add_parser(
        "import", help="wrap your own model (zoo, torchvision or timm arch + weights, or TorchScript) as a checkpoint",
        description="Bring your own teacher. With --arch, --torchvision or --timm the weights are loaded into an "
                    "nn.Module (BatchNorm statistics usable by the inversion; penultimate features from the input "
                    "of the final linear layer); a TorchScript model serves logits, and features only if its "
                    "forward(x, return_features) returns them. The imported model is measured on the test split "
                    "and refused below --min-accuracy unless --force. See docs/teacher.md.")
    _data_arguments(p, None)
    p.add_argument("--out", required=True, help="checkpoint directory to write")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--torchscript", default=None, metavar="FILE", help="a torch.jit.save'd classifier")
    source.add_argument("--arch", default=None, help="zoo architecture name of the state dict in --weights")
    source.add_argument("--torchvision", default=None, metavar="NAME",
                        help="torchvision.models architecture of the state dict, e.g. resnet18, mobilenet_v2")
    source.add_argument("--timm", default=None, metavar="NAME", help="timm architecture (needs the timm extra)")
    p.add_argument("--arch-kwargs", default="", metavar="K=V,...", help="architecture options, e.g. width=16")
    p.add_argument("--adapt", choices=("auto", "none", "small"), default=None,
                   help="torchvision/timm input stem: small (3x3 stride-1 conv for C channels, no max-pool), none "
                        "(as published, 3 channels), auto (small below 64 px or not 3 channels; default)")
    p.add_argument("--weights", default=None, metavar="FILE", help="state dict (.pt, .pth or .safetensors)")
    p.add_argument("--mean", default=None, metavar="M[,M,M]",
                   help="the normalisation mean the model was trained with, per channel (default: the dataset's)")
    p.add_argument("--std", default=None, metavar="S[,S,S]", help="the normalisation std, per channel")
    p.add_argument("--min-accuracy", type=float, default=None, metavar="FRACTION",
                   help=f"refuse a model below this test accuracy (default: twice chance; a warning below "
                        f"{WARN_ACCURACY})")
    p.add_argument("--force", action="store_true", help="import a model below --min-accuracy (with a warning)")
    p.add_argument("--role", default="teacher", choices=("teacher", "student"))
    p.add_argument("--no-eval", action="store_true", help="do not measure test accuracy")
    p.set_defaults(handler=_cli_import)


def _config_defaults(setting: str | None = None) -> tuple[TeacherConfig, str]:
    """The composed config's teacher section and dataset (configs/ is the one place defaults live)."""
    from shared.config import load_config

    cfg = load_config(setting=setting)
    return cfg.teacher, cfg.data.dataset


def _data_options(args: argparse.Namespace, dataset: str) -> DataOptions:
    return DataOptions(dataset=args.dataset or dataset, root=args.data_root, download=not args.no_download,
                       limit_train=getattr(args, "limit_train", None), limit_test=args.limit_test, seed=args.seed)


def _cli_train(args: argparse.Namespace) -> int:
    base, dataset = _config_defaults(args.setting)
    overrides = {k: getattr(args, k) for k in ("arch", "arch_kwargs", "epochs", "batch_size", "lr", "momentum",
                                               "weight_decay", "schedule", "augment", "label_smoothing")
                 if getattr(args, k) is not None}
    if overrides.get("arch", base.arch) != base.arch and "arch_kwargs" not in overrides:
        overrides["arch_kwargs"] = ""  # another architecture: its own defaults, not the configured width
    cfg = replace(base, **overrides)
    if "arch_kwargs" in overrides:
        cfg.arch_kwargs = format_arch_kwargs(parse_arch_kwargs(cfg.arch_kwargs, "--arch-kwargs"))
    data = _data_options(args, dataset)
    out = Path(args.out or f"outputs/teachers/{data.dataset}")
    run = train_teacher(cfg, data, out, device=args.device, progress=not args.quiet, note=args.note)
    print(f"teacher {cfg.arch}({cfg.arch_kwargs}) on {data.dataset}: test accuracy "
          f"{100 * (run.card.test_accuracy or 0):.2f}% on {run.card.provenance['test_images']} test images, "
          f"trained in {run.card.provenance['train_seconds']:.0f} s; checkpoint: {out}")
    return 0


def _cli_eval(args: argparse.Namespace) -> int:
    base, _ = _config_defaults()
    from shared.paths import resolve_path

    checkpoint = args.checkpoint or resolve_path(base.checkpoint, "teacher.checkpoint", "pass --checkpoint DIR")
    data = _data_options(args, args.dataset or "")
    result = evaluate_teacher(checkpoint, data, device=args.device, expect_dataset=args.dataset)
    card = "not recorded" if result.card_accuracy is None else f"{100 * result.card_accuracy:.2f}%"
    print(f"checkpoint {checkpoint} on {result.dataset} test split ({result.num_images} images): "
          f"fresh accuracy {100 * result.accuracy:.2f}%, card {card}")
    diff = result.difference_points
    if diff is not None:
        print(f"difference: {diff:+.2f} points")
        if args.tolerance is not None and abs(diff) > args.tolerance:
            print(f"difference exceeds --tolerance {args.tolerance} points")
            return 1
    return 0


def _import_arch(args: argparse.Namespace) -> tuple[str | None, dict[str, Any], str]:
    """The architecture name (``torchvision:NAME`` / ``timm:NAME`` for those flags), its options and the flags
    that reproduce them."""
    kwargs = parse_arch_kwargs(args.arch_kwargs, "--arch-kwargs")
    external = ("torchvision", args.torchvision) if args.torchvision else ("timm", args.timm) if args.timm else None
    if external is None:
        if args.adapt is not None:
            raise ConfigError("--adapt applies to --torchvision/--timm models; zoo models take --arch-kwargs")
        if args.torchscript:
            return None, kwargs, f"--torchscript {args.torchscript}"
        return args.arch, kwargs, f"--arch {args.arch} --arch-kwargs {format_arch_kwargs(kwargs)}"
    if kwargs:
        raise ConfigError(f"--{external[0]} models take --adapt, not --arch-kwargs {args.arch_kwargs!r}")
    adapt = args.adapt or "auto"
    return f"{external[0]}:{external[1]}", {"adapt": adapt}, f"--{external[0]} {external[1]} --adapt {adapt}"


def _cli_stats(args: argparse.Namespace) -> tuple[list[float], list[float]] | None:
    if (args.mean is None) != (args.std is None):
        raise ConfigError("--mean and --std go together (the normalisation the model was trained with)")
    if args.mean is None:
        return None
    try:
        return [float(v) for v in args.mean.split(",")], [float(v) for v in args.std.split(",")]
    except ValueError:
        raise ConfigError(f"--mean {args.mean!r} / --std {args.std!r} must be comma-separated numbers") from None


def _cli_import(args: argparse.Namespace) -> int:
    _, dataset = _config_defaults()
    data = _data_options(args, dataset)
    arch, kwargs, source = _import_arch(args)
    stats = _cli_stats(args)
    if args.weights and not args.torchscript:
        source += f" --weights {args.weights}"
    if stats is not None:
        source += f" --mean {args.mean} --std {args.std}"
    command = f"condex teacher import --dataset {data.dataset} {source} --out {args.out}"
    _, card = import_teacher(args.out, data, torchscript=args.torchscript, arch=arch, arch_kwargs=kwargs,
                             weights=args.weights, evaluate_now=not args.no_eval, device=args.device,
                             role=args.role, command=command, stats=stats, min_accuracy=args.min_accuracy,
                             force=args.force)
    acc = "not measured" if card.test_accuracy is None else f"{100 * card.test_accuracy:.2f}%"
    print(f"imported {card.arch} for {card.dataset} into {args.out}; test accuracy {acc}")
    return 0


__all__ = [
    "DataOptions", "TeacherEvaluation", "TeacherRun", "add_cli", "evaluate_teacher",
    "import_teacher", "read_state_dict", "train_teacher",
]
