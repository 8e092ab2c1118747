"""``condex distill`` and ``condex export``.

Defaults come from the composed configuration (``configs/``, the FMNIST-CPU setting); flags and
``--set distill.key=value`` override them::

    condex distill --teacher assets/teachers/fashion_mnist --condensed payloads/ --method fast --guided \\
        --budget-seconds 300 --out runs/fast_guided
    condex distill --out runs/fast_guided --resume
    condex export --checkpoint runs/fast_guided/student --out exports/student

Payloads are matched to the teacher by their class names, channels and size, not by dataset name: payloads
of a site's own images (``condex condense --dataset folder --teacher DIR``) serve a Fashion-MNIST teacher.
The test split comes from the teacher's dataset (``--data-root`` says where its files are; for a teacher of
``folder`` data, the folder holding ``test.npz`` or ``test/<class>/``). The default teacher
(``teacher.checkpoint``) is found relative to the working directory or the condex installation.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from shared.errors import ConfigError


def add_cli(subparsers: Any) -> None:
    distill = subparsers.add_parser("distill", help="guided model inversion + KD of a student from a teacher",
                                    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    distill.add_argument("--teacher", help="teacher checkpoint directory (default: teacher.checkpoint, found "
                         "relative to the working directory or the condex installation)")
    distill.add_argument("--data-root", help="where the teacher dataset's files are (test split, real:IPC); "
                         "default: data.data_root, else the built-in location")
    distill.add_argument("--condensed", help="payload file, folder of payloads, or real:IPC for real few-shot samples")
    distill.add_argument("--method", "--base", dest="base", help="base inversion method (fast, deepinversion)")
    distill.add_argument("--mode", choices=["cs-only", "mi", "mi+cs", "mi*"], help="what the student learns from")
    distill.add_argument("--guided", action="store_true", help="shorthand for --mode 'mi*'")
    distill.add_argument("--student", help="student architecture from the model zoo")
    distill.add_argument("--epochs", type=int, help="epochs of Algorithm 1 (0: use --budget-seconds only)")
    distill.add_argument("--budget-seconds", type=float, help="training wall-time budget (0: use --epochs only)")
    distill.add_argument("--out", help="run directory (default: <output_dir>/distill)")
    distill.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    distill.add_argument("--device", help="auto, cpu or cuda[:N]")
    distill.add_argument("--seed", type=int)
    distill.add_argument("--setting", help="configs/setting/NAME.yaml to start from (default: fmnist_cpu; e.g. "
                         "cifar10_gpu)")
    distill.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                         help="config override, e.g. distill.fa_weight=2 or tensorboard=true (repeatable)")
    distill.add_argument("--export", default="", metavar="FORMATS",
                         help="also export the student (comma list of safetensors,torchscript,pt2,onnx) to "
                         "<out>/export")
    distill.add_argument("--no-progress", action="store_true")
    distill.set_defaults(handler=run_distill)

    export = subparsers.add_parser("export", help="export a student checkpoint to safetensors, TorchScript, ONNX")
    export.add_argument("--checkpoint", required=True, help="student checkpoint directory (e.g. <run>/student)")
    export.add_argument("--out", required=True, help="output directory (replaced atomically after verification)")
    export.add_argument("--formats", default="safetensors,torchscript,pt2,onnx",
                        help="comma list of safetensors, torchscript, pt2 (torch.export), onnx (default: all)")
    export.add_argument("--tolerance", type=float, default=1e-4, help="max abs output difference allowed")
    export.set_defaults(handler=run_export)


def _config(args: argparse.Namespace) -> Any:
    from shared.config import apply_overrides, load_config

    cfg = load_config(setting=getattr(args, "setting", None))
    values: dict[str, Any] = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item!r} must look like section.key=value")
        values[key] = value
    flags = {"distill.base": args.base, "distill.mode": "mi*" if args.guided else args.mode,
             "distill.student": args.student, "distill.epochs": args.epochs,
             "distill.budget_seconds": args.budget_seconds, "device": args.device, "seed": args.seed,
             "teacher.checkpoint": args.teacher, "data.data_root": args.data_root}
    values |= {k: v for k, v in flags.items() if v is not None}
    return apply_overrides(cfg, values).validate()


def teacher_split(card: Any, split: str, root: str, download: bool) -> Any:
    """The teacher dataset's ``split``; for a ``folder`` teacher, the folder's split labelled by its class names."""
    from shared.data import load_dataset
    from shared.data.sources import load_folder

    if card.dataset == "folder":
        if not root:
            raise ConfigError("the teacher was trained on 'folder' data: pass --data-root to the folder holding "
                              f"{split}.npz or {split}/<class>/ for evaluation")
        return load_folder(Path(root).expanduser(), split, card.class_names)
    return load_dataset(card.dataset, split, root=root or None, download=download)


def _real_ipc(value: str) -> int:
    text = value.split(":", 1)[1]
    if not text.isdigit() or int(text) < 1:
        raise ConfigError(f"--condensed {value!r}: real:IPC needs a positive whole number of images per class, "
                          "e.g. real:10")
    return int(text)


def run_distill(args: argparse.Namespace) -> int:
    from server.distillation import CondensedSet, Distiller, load_condensed
    from server.distillation.plots import save_end_plots
    from server.distillation.watch import RunWatcher
    from server.run import fill_resume_arguments
    from shared.checkpoint import load_checkpoint
    from shared.device import select_device
    from shared.paths import resolve_path

    if args.resume:  # --out is enough: the rest comes from <out>/run.json
        fill_resume_arguments(args)
    cfg = _config(args)
    device = select_device(cfg.device)
    teacher_dir = resolve_path(args.teacher, "--teacher") if args.teacher else resolve_path(
        cfg.teacher.checkpoint, "teacher.checkpoint", "pass --teacher DIR")
    teacher, card = load_checkpoint(teacher_dir, device=device)
    condensed = None
    root, download = cfg.data.data_root, cfg.data.download
    if args.condensed:
        if args.condensed.startswith("real:"):
            ipc = _real_ipc(args.condensed)
            condensed = CondensedSet.from_real(teacher_split(card, "train", root, download), ipc, cfg.seed)
        else:
            condensed = load_condensed(args.condensed, card)
    test = teacher_split(card, "test", root, download)
    out = Path(args.out or Path(cfg.output_dir) / "distill")
    condensed_arg = args.condensed if not args.condensed or args.condensed.startswith("real:") else \
        str(Path(args.condensed).resolve())  # absolute: run.json lets --resume find it from any directory
    provenance = {"teacher_checkpoint": str(teacher_dir.resolve()), "condensed": condensed_arg,
                  "data_root": args.data_root}
    distiller = Distiller(cfg.distill, teacher, card, condensed, test, out, device, cfg.seed,
                          progress=not args.no_progress, provenance=provenance)
    # without the progress bar, a line at least every 20 s; with tensorboard=true, TensorBoard events too
    watcher = RunWatcher(out / "metrics.jsonl", print if args.no_progress else lambda _: None,
                         tensorboard_dir=out / "tensorboard" if cfg.tensorboard else None)
    with watcher:
        result = distiller.fit(resume=args.resume)
    save_end_plots(distiller, test)
    acc = "n/a" if result.accuracy is None else f"{100 * result.accuracy:.2f}%"
    print(f"student {cfg.distill.student} ({cfg.distill.base} {cfg.distill.mode}): test accuracy {acc} after "
          f"{result.epochs} epochs, {result.train_seconds:.0f} s; checkpoint {out / 'student'}")
    if args.export:
        _export(out / "student", out / "export", args.export.split(","), 1e-4)
    return 0


def _export(checkpoint: Path, out: Path, formats: list[str], tolerance: float) -> None:
    from server.export import export_student
    from shared.checkpoint import load_checkpoint

    model, card = load_checkpoint(checkpoint)
    records = export_student(model, card, out, [f.strip() for f in formats if f.strip()], tolerance)
    for record in records:
        print(f"wrote {record.format:12s} {record.path} (max abs diff {record.max_abs_diff:.2e})")
    manifest = json.loads((out / "export.json").read_text(encoding="utf-8"))
    contract = manifest["input"]
    print(f"files in {out}: {', '.join(manifest['files'])} (each model file stands alone)")
    shape = " x ".join(str(d) for d in contract["shape"])
    print(f"input: {shape} float32, (pixels in [0, 1] - mean {contract['mean']}) / std {contract['std']}; "
          f"classes: {', '.join(manifest['class_names'])}; see {out / 'export.json'}")


def run_export(args: argparse.Namespace) -> int:
    _export(Path(args.checkpoint), Path(args.out), args.formats.split(","), args.tolerance)
    return 0

