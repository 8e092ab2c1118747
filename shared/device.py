"""Device selection, mixed precision and seeding: CUDA (AMP, channels_last) when present, else CPU."""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Iterator

import numpy as np
import torch

from shared.errors import ConfigError


def select_device(preference: str = "auto") -> torch.device:
    """Return the device to run on: ``auto`` picks CUDA when available."""
    if preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if preference.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={preference!r} but CUDA is not available; use device=auto or cpu")
    if preference not in ("cpu",) and not preference.startswith("cuda"):
        raise ConfigError(f"device={preference!r} is not one of auto, cpu, cuda[:N]")
    return torch.device(preference)


def autocast(device: torch.device) -> contextlib.AbstractContextManager[None]:
    """Mixed precision on CUDA (untested here: no GPU on the development machines); no-op on CPU."""
    if device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def grad_scaler(device: torch.device) -> torch.amp.GradScaler:
    """The loss scaler that goes with ``autocast``'s fp16 on CUDA (small fp16 gradients would underflow to 0
    without it); disabled elsewhere, where ``scale`` returns the loss and ``step`` is ``optimizer.step``."""
    return torch.amp.GradScaler(device.type, enabled=device.type == "cuda")


def prepare_model(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """Move a model to ``device``; channels_last on CUDA where convolutions benefit from it."""
    model = model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))


@contextlib.contextmanager
def torch_threads(num_threads: int | None) -> Iterator[None]:
    """Temporarily set the number of intra-op CPU threads (None keeps the current value)."""
    previous = torch.get_num_threads()
    if num_threads:
        torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
