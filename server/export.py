"""Export a distilled student: safetensors + JSON card, TorchScript and ONNX, each verified by reload.

Everything is written into a staging directory first; every format is reloaded from disk and its outputs
on a fixed probe batch compared with the PyTorch model (max abs diff <= ``tolerance``, default 1e-4).
Only when all requested formats pass is the directory renamed into place and reported written. The
output directory is itself a checkpoint directory (``load_checkpoint(out)`` works) with
``student.torchscript.pt``, ``student.onnx`` and ``export.json`` (files, diffs) beside the weights."""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from shared.checkpoint import ModelCard, load_checkpoint, save_checkpoint
from shared.errors import CheckpointError, ConfigError
from shared.io import atomic_dir

FORMATS = ("safetensors", "torchscript", "onnx")
FILES = {"safetensors": "model.safetensors", "torchscript": "student.torchscript.pt", "onnx": "student.onnx"}


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


def _save_onnx(model: nn.Module, x: torch.Tensor, path: Path) -> Callable[[torch.Tensor], np.ndarray]:
    import onnxruntime as ort

    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(model, (x,), str(path), input_names=["images"], output_names=["logits"],
                              dynamic_shapes=({0: torch.export.Dim("batch")},), dynamo=True, verbose=False)
        except Exception:
            torch.onnx.export(model, (x,), str(path), input_names=["images"], output_names=["logits"],
                              dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False)
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
        if "onnx" in formats:
            run = _save_onnx(model, x, staging / FILES["onnx"])
            records.append(ExportRecord("onnx", FILES["onnx"], _compare(run, model, x)))
        bad = [r for r in records if not r.max_abs_diff <= tolerance]
        if bad:
            detail = ", ".join(f"{r.format}: {r.max_abs_diff:.3g}" for r in bad)
            raise CheckpointError(f"export verification failed (max abs diff > {tolerance}): {detail}; "
                                  f"nothing was written to {out_dir}")
        (staging / "export.json").write_text(json.dumps(
            {"tolerance": tolerance, "probe_batch": list(x.shape), "exports": [asdict(r) for r in records]},
            indent=2) + "\n", encoding="utf-8")
    return [ExportRecord(r.format, str(out_dir / r.path), r.max_abs_diff) for r in records]
