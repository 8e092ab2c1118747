"""Model checkpoints: a directory holding the weights (safetensors, or TorchScript for imported models) and a
JSON model card that says how to rebuild the model and what data it expects.

Teachers (``server/teacher.py``) and exported students share this format, so every consumer can check a
checkpoint against the dataset it is about to use before running it."""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn

from shared.errors import CheckpointError
from shared.io import atomic_dir

CARD_FILE = "card.json"
WEIGHTS_FILES = {"safetensors": "model.safetensors", "torchscript": "model.torchscript.pt"}
ROLES = ("teacher", "student")
CARD_VERSION = 1


@dataclass
class ModelCard:
    """Everything needed to rebuild a model and to check it fits a dataset. ``test_accuracy`` is a fraction
    in [0, 1] measured on the dataset's real test split (None when it could not be measured)."""

    arch: str
    dataset: str
    num_classes: int
    in_channels: int
    image_size: int
    mean: list[float]
    std: list[float]
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    class_names: list[str] = field(default_factory=list)
    test_accuracy: float | None = None
    seed: int | None = None
    created: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    command: str = ""
    role: str = "teacher"
    provenance: dict[str, Any] = field(default_factory=dict)
    format: str = "safetensors"
    version: int = CARD_VERSION

    def validate(self, source: str = "card") -> ModelCard:
        """Raise ``CheckpointError`` naming the first field that cannot be right."""
        from shared.config.checks import check_types
        from shared.errors import ConfigError

        try:  # every field of its declared type first (a card is JSON from disk or the wire)
            check_types(self, source)
        except ConfigError as exc:
            raise CheckpointError(f"{exc}; restore the card or re-create the checkpoint") from None
        if self.role not in ROLES:
            raise CheckpointError(f"{source}: role={self.role!r} must be one of {', '.join(ROLES)}")
        if self.format not in WEIGHTS_FILES:
            raise CheckpointError(f"{source}: format={self.format!r} must be one of {', '.join(WEIGHTS_FILES)}")
        for name in ("num_classes", "in_channels", "image_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise CheckpointError(f"{source}: {name}={getattr(self, name)!r} must be a positive integer")
        if len(self.mean) != self.in_channels or len(self.std) != self.in_channels:
            raise CheckpointError(
                f"{source}: mean/std have {len(self.mean)}/{len(self.std)} values but in_channels={self.in_channels}"
            )
        if not all(_finite_number(m) for m in self.mean) or not all(_finite_number(s) and s > 0 for s in self.std):
            raise CheckpointError(f"{source}: mean={self.mean} / std={self.std} must be finite numbers, std > 0; "
                                  "restore the card's normalisation (the dataset's per-channel mean and std)")
        if self.class_names and len(self.class_names) != self.num_classes:
            raise CheckpointError(
                f"{source}: class_names has {len(self.class_names)} names but num_classes={self.num_classes}"
            )
        acc = self.test_accuracy
        if acc is not None and (not isinstance(acc, int | float) or math.isnan(acc) or not 0.0 <= acc <= 1.0):
            raise CheckpointError(f"{source}: test_accuracy={acc!r} must be a fraction in [0, 1] or null")
        if not isinstance(self.arch_kwargs, dict):
            raise CheckpointError(f"{source}: arch_kwargs must be a JSON object, got {type(self.arch_kwargs).__name__}")
        return self

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "card") -> ModelCard:
        """Build a card from parsed JSON; missing or unknown keys raise ``CheckpointError``."""
        if not isinstance(values, dict):
            raise CheckpointError(f"{source}: expected a JSON object, got {type(values).__name__}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        required = [n for n, f in fields.items()
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        missing = [n for n in required if n not in values]
        if missing:
            raise CheckpointError(f"{source}: missing key(s) {', '.join(missing)}; re-create the checkpoint "
                                  "with `condex teacher train` or `condex teacher import`")
        unknown = sorted(set(values) - set(fields))
        if unknown:
            raise CheckpointError(f"{source}: unknown key(s) {', '.join(unknown)}; is this a condex model card?")
        version = values.get("version", CARD_VERSION)
        if isinstance(version, bool) or not isinstance(version, int):
            raise CheckpointError(f"{source}: version={version!r} must be an integer (e.g. {CARD_VERSION}), "
                                  "not a string")
        if not isinstance(values.get("mean"), list) or not isinstance(values.get("std"), list):
            raise CheckpointError(f"{source}: mean and std must be lists with one number per channel")
        if values.get("version", CARD_VERSION) > CARD_VERSION:
            raise CheckpointError(f"{source}: card version {values['version']} is newer than this condex "
                                  f"(supports {CARD_VERSION}); upgrade condex")
        try:
            card = cls(**values)
        except TypeError as exc:
            raise CheckpointError(f"{source}: {exc}") from None
        card.mean, card.std = list(card.mean), list(card.std)
        return card.validate(source)

    @classmethod
    def read(cls, path: str | Path) -> ModelCard:
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"model card {path} does not exist; a checkpoint directory holds {CARD_FILE} "
                                  "next to the weights")
        try:
            values = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError, ints beyond 4300 digits
            raise CheckpointError(f"model card {path} is not valid JSON ({exc}); restore it or re-create the "
                                  "checkpoint") from None
        return cls.from_dict(values, source=str(path))


def _finite_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@contextmanager
def quiet_jit() -> Iterator[None]:
    """torch.jit's save/load/script warn that TorchScript is deprecated; it is still how users ship models."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")
        yield


def card_for_dataset(info: Any, arch: str, arch_kwargs: dict[str, Any] | None = None, **fields: Any) -> ModelCard:
    """A card whose data fields (classes, shape, normalisation) come from a ``DatasetInfo``."""
    if info.image_size[0] != info.image_size[1]:
        raise CheckpointError(f"dataset {info.name} has non-square images {info.image_size}; models need square input")
    return ModelCard(
        arch=arch, arch_kwargs=dict(arch_kwargs or {}), dataset=info.name, num_classes=info.num_classes,
        in_channels=info.channels, image_size=info.image_size[0], mean=list(info.mean), std=list(info.std),
        class_names=list(info.class_names), **fields,
    )


class ScriptedClassifier(nn.Module):
    """Wraps an imported TorchScript classifier so it answers like a zoo model.

    TorchScript modules run as one graph, so Python hooks on their BatchNorm layers never fire: such a
    teacher serves logits (and features when its ``forward(x, return_features)`` supports them), but
    BN-statistics losses (DeepInversion) cannot use it (``supports_bn_hooks`` is False)."""

    supports_bn_hooks = False

    def __init__(self, scripted: torch.jit.ScriptModule, num_classes: int, returns_features: bool,
                 feature_dim: int) -> None:
        super().__init__()
        self.scripted = scripted
        self.num_classes = num_classes
        self.returns_features = returns_features
        self.feature_dim = feature_dim

    def forward(self, x: torch.Tensor, return_features: bool = False) -> Any:
        if not return_features:
            out = self.scripted(x, False) if self.returns_features else self.scripted(x)
            return out
        if self.returns_features:
            return self.scripted(x, True)
        # Never hand logits over as "features": feature alignment would silently align the wrong thing.
        raise CheckpointError("this TorchScript teacher has no forward(x, return_features) (feature_dim=0), so it "
                              "has no penultimate features; script a model whose forward returns them, or import "
                              "the architecture with --torchvision/--arch and a state dict")


def probe_scripted(scripted: torch.jit.ScriptModule, card: ModelCard) -> tuple[bool, int]:
    """Run a dummy batch: check the logits shape and find out whether ``forward(x, True)`` gives features."""
    x = torch.zeros(2, card.in_channels, card.image_size, card.image_size)
    scripted.eval()
    with torch.no_grad():
        try:
            logits = scripted(x)
        except Exception as exc:  # TorchScript raises RuntimeError/TypeError variants; report them all
            raise CheckpointError(f"TorchScript model fails on input 2x{card.in_channels}x{card.image_size}x"
                                  f"{card.image_size} for dataset {card.dataset}: {exc}") from None
        if isinstance(logits, tuple):
            raise CheckpointError("TorchScript model returns a tuple by default; its forward(x) must return logits")
        if tuple(logits.shape) != (2, card.num_classes):
            raise CheckpointError(f"TorchScript model returns shape {tuple(logits.shape)} but dataset "
                                  f"{card.dataset} needs (N, {card.num_classes}) logits")
        try:
            out = scripted(x, True)
        except Exception:  # forward takes no second argument: a logits-only model (feature_dim 0: no features)
            return False, 0
    if isinstance(out, tuple) and len(out) == 2 and out[1].ndim == 2:
        return True, int(out[1].shape[1])
    return False, 0


def save_checkpoint(directory: str | Path, model: nn.Module, card: ModelCard) -> Path:
    """Write ``model`` and ``card`` into ``directory`` atomically (the old checkpoint stays until the new one
    is complete). TorchScript cards expect ``model`` to be a ``ScriptedClassifier`` or a ScriptModule."""
    from safetensors.torch import save_file

    card.validate()
    directory = Path(directory)
    with atomic_dir(directory) as tmp:
        weights = tmp / WEIGHTS_FILES[card.format]
        if card.format == "safetensors":
            state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
            save_file(state, str(weights), metadata={"arch": card.arch, "dataset": card.dataset})
        else:
            scripted = model.scripted if isinstance(model, ScriptedClassifier) else model
            if not isinstance(scripted, torch.jit.ScriptModule):
                raise CheckpointError(
                    f"card format 'torchscript' needs a TorchScript model, got {type(model).__name__}"
                )
            with quiet_jit():
                torch.jit.save(scripted, str(weights))
        (tmp / CARD_FILE).write_text(card.to_json(), encoding="utf-8")
    return directory


def check_dataset(card: ModelCard, expect_dataset: str, source: str) -> None:
    if card.dataset != expect_dataset:
        raise CheckpointError(
            f"checkpoint {source} was trained on {card.dataset} but dataset {expect_dataset} was requested; "
            f"use a {expect_dataset} checkpoint (teacher.checkpoint=...) or train one with "
            f"`condex teacher train --dataset {expect_dataset}`"
        )


def load_checkpoint(directory: str | Path, expect_dataset: str | None = None,
                    device: torch.device | str = "cpu") -> tuple[nn.Module, ModelCard]:
    """Rebuild the model of a checkpoint directory in eval mode on ``device`` and return it with its card."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint directory {directory} does not exist; train one with "
                              "`condex teacher train --out DIR` or point teacher.checkpoint at an existing one")
    card = ModelCard.read(directory / CARD_FILE)
    if expect_dataset is not None:
        check_dataset(card, expect_dataset, str(directory))
    weights = directory / WEIGHTS_FILES[card.format]
    if not weights.is_file():
        raise CheckpointError(f"checkpoint {directory} has a card but no weights file {weights.name}")
    model = load_scripted(weights, card) if card.format == "torchscript" else _load_safetensors(weights, card)
    return model.to(device).eval(), card


def _load_safetensors(weights: Path, card: ModelCard) -> nn.Module:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"weights file {weights} cannot be read ({exc}); it is corrupted or not safetensors"
        ) from None
    model = build_from_card(card)
    load_state_dict_checked(model, state, str(weights), card.arch)
    return model


def load_scripted(weights: Path, card: ModelCard) -> ScriptedClassifier:
    """A TorchScript classifier, probed for its outputs (logits, or logits and features) against ``card``."""
    try:
        with quiet_jit():
            scripted = torch.jit.load(str(weights), map_location="cpu")
    except (RuntimeError, ValueError, OSError) as exc:
        raise CheckpointError(f"{weights} is not a loadable TorchScript file ({exc}); save it with torch.jit.save") \
            from None
    check_finite_weights(dict(scripted.state_dict()), str(weights))
    returns_features, feature_dim = probe_scripted(scripted, card)
    return ScriptedClassifier(scripted, card.num_classes, returns_features, feature_dim)


def build_from_card(card: ModelCard) -> nn.Module:
    """Instantiate the zoo architecture a card names (weights untouched)."""
    from shared.models import build_model

    try:
        return build_model(card.arch, num_classes=card.num_classes, in_channels=card.in_channels,
                           image_size=card.image_size, **card.arch_kwargs)
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"card arch={card.arch!r} with arch_kwargs={card.arch_kwargs} cannot be built: "
                              f"{exc}") from None


def check_finite_weights(state: dict[str, torch.Tensor], source: str) -> None:
    """Refuse weights holding NaN or infinity: such a model answers (about 10% accuracy, exit 0) and turns every
    student distilled from it into NaN, so it is stopped at load with the first offending tensor named."""
    for name, tensor in state.items():
        if isinstance(tensor, torch.Tensor) and tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise CheckpointError(f"weights in {source}: tensor {name} has {bad} NaN/infinite value(s); the model "
                                  "diverged or the file was damaged. Retrain it or restore a good copy")


def load_state_dict_checked(model: nn.Module, state: dict[str, torch.Tensor], source: str, arch: str) -> None:
    """Load ``state`` strictly; report missing/unexpected keys, shape mismatches and non-finite values in one
    readable error."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
             if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or wrong:
        parts = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", wrong)):
            if items:
                more = f" (+{len(items) - 5} more)" if len(items) > 5 else ""
                parts.append(f"{label}: {', '.join(items[:5])}{more}")
        raise CheckpointError(f"weights in {source} do not fit arch {arch}: {'; '.join(parts)}. "
                              "Check the card's arch/arch_kwargs (e.g. width) against the weights")
    check_finite_weights(state, source)
    model.load_state_dict(state, strict=True)
