"""Export a distilled student: safetensors + JSON card, TorchScript, ``torch.export`` (.pt2) and ONNX, each
verified by reload.

Everything is written into a staging directory first; every format is reloaded from disk and its outputs
on a fixed probe batch compared with the PyTorch model: max abs diff <= ``tolerance`` (default 1e-4) times
the scale of the logits, max(1, max |logit|), because float32 rounding grows with the values (a student
whose logits reach 1e7 differs by ~1e3 between runtimes that agree to 7 digits).
Only when all requested formats pass is the directory renamed into place and reported written. The
output directory is itself a checkpoint directory (``load_checkpoint(out)`` works) with
``student.torchscript.pt``, ``student.pt2``, ``student.onnx`` and ``export.json`` beside the weights.

Each file stands alone: the ONNX model keeps its weights inside (no ``student.onnx.data`` side file) and
carries the input contract as metadata (``condex.*`` keys). ``export.json`` says what the model expects
(``input``: N x C x H x W float32, ``(pixels in [0, 1] - mean) / std``; ``class_names`` in logit order) and
lists every file of the directory (``files``), so a user knows what to ship."""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from shared.checkpoint import CARD_FILE, ModelCard, load_checkpoint, save_checkpoint
from shared.errors import CheckpointError, ConfigError
from shared.io import atomic_dir

FORMATS = ("safetensors", "torchscript", "pt2", "onnx")
FILES = {"safetensors": "model.safetensors", "torchscript": "student.torchscript.pt", "pt2": "student.pt2",
         "onnx": "student.onnx"}
EXPORT_JSON = "export.json"


@dataclass
class ExportRecord:
    format: str
    path: str
    max_abs_diff: float


def onnx_available() -> bool:
    """ONNX export needs the ``export`` extra (onnx, onnxruntime; onnxscript for the dynamo exporter)."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def probe_batch(card: ModelCard, n: int = 8, seed: int = 0) -> torch.Tensor:
    """A fixed batch in the model's normalised input space (pixels uniform in [0, 1])."""
    gen = torch.Generator().manual_seed(seed)
    pixels = torch.rand(n, card.in_channels, card.image_size, card.image_size, generator=gen)
    mean = torch.tensor(card.mean).view(1, -1, 1, 1)
    std = torch.tensor(card.std).view(1, -1, 1, 1)
    return (pixels - mean) / std


def _max_diff(a: torch.Tensor | np.ndarray, b: torch.Tensor) -> float:
    return float((torch.as_tensor(np.asarray(a)) - b).abs().max())


def _compare(run: Callable[[torch.Tensor], torch.Tensor | np.ndarray], model: nn.Module, x: torch.Tensor) -> float:
    """Max abs diff on the probe batch and on a smaller one (checks the batch dimension is dynamic)."""
    return max(_max_diff(run(batch), model(batch)) for batch in (x, x[:3]))


def _save_torchscript(model: nn.Module, x: torch.Tensor, path: Path) -> Callable[[torch.Tensor], torch.Tensor]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated upstream but still the portable format
        try:
            scripted = torch.jit.script(model)
        except Exception:
            scripted = torch.jit.trace(model, (x,))
        torch.jit.save(scripted, str(path))
        loaded = torch.jit.load(str(path), map_location="cpu").eval()
    return loaded


def _save_pt2(model: nn.Module, x: torch.Tensor, path: Path) -> Callable[[torch.Tensor], torch.Tensor]:
    """``torch.export`` (TorchScript's successor) with a dynamic batch dimension, reloaded from disk."""
    program = torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, str(path))
    return torch.export.load(str(path)).module()


def input_contract(card: ModelCard) -> dict[str, Any]:
    """What the exported model expects and returns (export.json ``input``/``output``, ONNX metadata)."""
    return {
        "input": {"name": "images", "shape": ["N", card.in_channels, card.image_size, card.image_size],
                  "layout": "NCHW", "dtype": "float32", "pixel_range": [0.0, 1.0], "mean": list(card.mean),
                  "std": list(card.std), "normalisation": "images = (pixels - mean) / std, per channel"},
        "output": {"name": "logits", "shape": ["N", card.num_classes]},
        "class_names": list(card.class_names) or [str(i) for i in range(card.num_classes)],
    }


def _save_onnx(model: nn.Module, x: torch.Tensor, path: Path,
               card: ModelCard) -> Callable[[torch.Tensor], np.ndarray]:
    import onnx
    import onnxruntime as ort

    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        try:  # external_data=False: one self-contained file (students are far below ONNX's 2 GB limit)
            torch.onnx.export(model, (x,), str(path), input_names=["images"], output_names=["logits"],
                              dynamic_shapes=({0: torch.export.Dim("batch")},), dynamo=True, verbose=False,
                              external_data=False)
        except Exception:
            torch.onnx.export(model, (x,), str(path), input_names=["images"], output_names=["logits"],
                              dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False)
    proto = onnx.load(str(path))
    for key, value in input_contract(card).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = f"condex.{key}", json.dumps(value)
    onnx.save(proto, str(path), save_as_external_data=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda batch: session.run(None, {name: batch.numpy()})[0]


def export_student(model: nn.Module, card: ModelCard, out_dir: str | Path,
                   formats: tuple[str, ...] | list[str] = FORMATS, tolerance: float = 1e-4) -> list[ExportRecord]:
    """Write and verify ``formats`` of ``model`` into ``out_dir``; raise ``CheckpointError`` on any mismatch."""
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ConfigError(f"--formats: unknown {unknown}; choose from {', '.join(FORMATS)}")
    if "onnx" in formats and not onnx_available():
        raise ConfigError("--formats onnx needs onnx and onnxruntime: pip install 'condex[export]'")
    model = model.cpu().eval()
    x = probe_batch(card)
    with torch.no_grad():
        reference = model(x)
    records: list[ExportRecord] = []
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as staging, torch.no_grad():
        save_checkpoint(staging, model, card)  # always: the card is the export's description
        if "safetensors" in formats:
            reloaded, _ = load_checkpoint(staging)
            records.append(ExportRecord("safetensors", FILES["safetensors"], _max_diff(reloaded(x), reference)))
        if "torchscript" in formats:
            ts = _save_torchscript(model, x, staging / FILES["torchscript"])
            records.append(ExportRecord("torchscript", FILES["torchscript"], _compare(ts, model, x)))
        if "pt2" in formats:
            program = _save_pt2(model, x, staging / FILES["pt2"])
            records.append(ExportRecord("pt2", FILES["pt2"], _compare(program, model, x)))
        if "onnx" in formats:
            run = _save_onnx(model, x, staging / FILES["onnx"], card)
            records.append(ExportRecord("onnx", FILES["onnx"], _compare(run, model, x)))
        bound = tolerance * max(1.0, float(reference.abs().max()))
        bad = [r for r in records if not r.max_abs_diff <= bound]
        if bad:
            detail = ", ".join(f"{r.format}: {r.max_abs_diff:.3g}" for r in bad)
            raise CheckpointError(f"export verification failed (max abs diff > {bound:.3g}, {tolerance} x the "
                                  f"logit scale): {detail}; nothing was written to {out_dir}")
        write_manifest(staging, card, records, tolerance, list(x.shape))
    return [ExportRecord(r.format, str(out_dir / r.path), r.max_abs_diff) for r in records]


def write_manifest(directory: Path, card: ModelCard, records: list[ExportRecord], tolerance: float,
                   probe: list[int]) -> None:
    """``export.json``: the input contract, the verified formats and every file of ``directory`` (itself
    included), so nothing the model needs is left unmentioned."""
    files = sorted({p.name for p in directory.iterdir() if p.is_file()} | {EXPORT_JSON})
    unexplained = [f for f in files if f not in {*FILES.values(), CARD_FILE, EXPORT_JSON}]
    if unexplained:  # e.g. an exporter's side file: the listed formats would not load without it
        raise CheckpointError(f"export wrote unexpected file(s) {', '.join(unexplained)}; nothing was written")
    manifest = {"arch": card.arch, "dataset": card.dataset, **input_contract(card), "files": files,
                "tolerance": tolerance, "probe_batch": probe, "exports": [asdict(r) for r in records]}
    (directory / EXPORT_JSON).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
