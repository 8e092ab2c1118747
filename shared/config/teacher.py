"""How the server's teacher is found (``checkpoint``) and how ``condex teacher train`` trains one.

The training defaults are the CPU default Fashion-MNIST teacher (VGG-11 with BatchNorm, width 8, see
docs/teacher.md): fast on CPU, BatchNorm after every convolution for DeepInversion's statistics loss.
``arch_kwargs`` is a flat ``key=value,key=value`` string so the section stays flat for Flower's run config."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from typing import Any

from shared.config.checks import check_types
from shared.errors import ConfigError


@dataclass
class TeacherConfig:
    checkpoint: str = "assets/teachers/fashion_mnist"
    arch: str = "vgg11"
    arch_kwargs: str = "width=8"
    epochs: int = 15
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "onecycle"  # onecycle | cosine | constant
    label_smoothing: float = 0.0  # smoothing makes worse KD teachers (flatter logits); keep 0 for teachers
    augment: str = "auto"  # auto (crop, + flip for colour images) | none | crop | crop_flip

    def kwargs(self) -> dict[str, Any]:
        return parse_arch_kwargs(self.arch_kwargs, "teacher.arch_kwargs")

    def validate(self) -> None:
        from shared.models import model_names
        from shared.train import AUGMENTS, SCHEDULES

        check_types(self, "teacher")
        if self.arch not in model_names():
            raise ConfigError(f"teacher.arch={self.arch!r} is unknown; choose one of {', '.join(model_names())}")
        self.kwargs()
        if self.epochs < 1:
            raise ConfigError(f"teacher.epochs={self.epochs} must be >= 1")
        if self.batch_size < 1:
            raise ConfigError(f"teacher.batch_size={self.batch_size} must be >= 1")
        if self.lr <= 0:
            raise ConfigError(f"teacher.lr={self.lr} must be > 0")
        if not 0.0 <= self.momentum < 1.0:
            raise ConfigError(f"teacher.momentum={self.momentum} must be in [0, 1)")
        if self.weight_decay < 0:
            raise ConfigError(f"teacher.weight_decay={self.weight_decay} must be >= 0")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"teacher.schedule={self.schedule!r} must be one of {', '.join(SCHEDULES)}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"teacher.label_smoothing={self.label_smoothing} must be in [0, 1)")
        if self.augment not in AUGMENTS:
            raise ConfigError(f"teacher.augment={self.augment!r} must be one of {', '.join(AUGMENTS)}")


def parse_arch_kwargs(text: str, field: str = "arch_kwargs") -> dict[str, Any]:
    """Parse ``"width=16,depth=3"`` into ``{"width": 16, "depth": 3}`` (values are Python literals or strings)."""
    result: dict[str, Any] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        key, sep, raw = item.partition("=")
        key, raw = key.strip(), raw.strip()
        if not sep or not key.isidentifier():
            raise ConfigError(f"{field}={text!r}: {item!r} must look like name=value (e.g. width=16)")
        try:
            result[key] = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            result[key] = raw  # a bare word such as norm=batchnorm
    return result


def format_arch_kwargs(kwargs: dict[str, Any]) -> str:
    """Inverse of ``parse_arch_kwargs`` for the values the zoo uses (numbers, booleans, words)."""
    return ",".join(f"{k}={v}" for k, v in kwargs.items())
