"""Typed configuration shared by the CLI, Hydra entry points and the Flower apps.

One source of defaults: the dataclasses below give generic defaults, ``configs/`` (Hydra) composes the
FMNIST-CPU setting on top of them, and ``[tool.flwr.app.config]`` mirrors the composed result with
``section.kebab-key`` names (a test keeps the mirror equal)."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.config.condense import CondenseConfig
from shared.config.data import DataConfig
from shared.config.distill import DistillConfig
from shared.config.federation import FederationConfig
from shared.config.screen import ScreenConfig
from shared.config.teacher import TeacherConfig
from shared.errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
SECTIONS = ("data", "teacher", "condense", "distill", "federation", "screen")


@dataclass
class CondexConfig:
    data: DataConfig = field(default_factory=DataConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    condense: CondenseConfig = field(default_factory=CondenseConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)
    screen: ScreenConfig = field(default_factory=ScreenConfig)
    seed: int = 0
    device: str = "auto"
    output_dir: str = "outputs"

    def validate(self) -> CondexConfig:
        for name in SECTIONS:
            getattr(self, name).validate()
        if self.device != "auto" and self.device != "cpu" and not self.device.startswith("cuda"):
            raise ConfigError(f"device={self.device!r} must be auto, cpu or cuda[:N]")
        return self


def _coerce(value: Any, target: Any, key: str) -> Any:
    """Convert ``value`` to the dataclass field type ``target``; refuse what does not fit."""
    origin = typing.get_origin(target)
    if target is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise ConfigError(f"{key}={value!r} must be true or false")
    if target in (int, float, str):
        if target is not str and isinstance(value, bool):  # True is 1 to Python, never an IPC or a rate
            raise ConfigError(f"{key}={value!r} must be {'an integer' if target is int else 'a number'}, not a boolean")
        if target is int and isinstance(value, float) and not value.is_integer():
            raise ConfigError(f"{key}={value!r} must be an integer")
        if target is str and not isinstance(value, str):
            raise ConfigError(f"{key}={value!r} must be a string")
        try:
            return target(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}={value!r} must be of type {target.__name__}") from None
    if origin in (list, tuple):
        items = value.split(",") if isinstance(value, str) else list(value)
        (item_type, *_) = typing.get_args(target) or (str,)
        return [_coerce(v, item_type, key) for v in items if v != ""]
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(target) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("", "none", "null")):
            return None
        return _coerce(value, args[0], key)
    return value


def _section_fields(section: Any) -> dict[str, Any]:
    hints = typing.get_type_hints(type(section))
    return {f.name: hints[f.name] for f in dataclasses.fields(section)}


def apply_overrides(cfg: CondexConfig, values: dict[str, Any]) -> CondexConfig:
    """Apply ``{"section.field": value}`` overrides; Flower's kebab-case keys are accepted too."""
    top = _section_fields(cfg)
    for raw_key, value in values.items():
        key = raw_key.replace("-", "_")
        section_name, _, field_name = key.partition(".")
        if not field_name:
            if section_name not in top or section_name in SECTIONS:
                raise ConfigError(f"unknown config key {raw_key!r}; top-level keys are seed, device, output_dir")
            setattr(cfg, section_name, _coerce(value, top[section_name], raw_key))
            continue
        if section_name not in SECTIONS:
            raise ConfigError(f"unknown config section in {raw_key!r}; sections are {', '.join(SECTIONS)}")
        section = getattr(cfg, section_name)
        fields = _section_fields(section)
        if field_name not in fields:
            known = ", ".join(sorted(f.replace("_", "-") for f in fields))
            raise ConfigError(f"unknown config key {raw_key!r}; {section_name} has: {known}")
        setattr(section, field_name, _coerce(value, fields[field_name], raw_key))
    return cfg


def from_dict(values: dict[str, Any]) -> CondexConfig:
    """Build a config from a nested dict (e.g. a composed Hydra config)."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if key in SECTIONS and isinstance(value, dict):
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            flat[key] = value
    return apply_overrides(CondexConfig(), flat)


def register_schema() -> None:
    """Make the dataclasses Hydra's schema, so every field can be overridden and is type-checked."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="condex_schema", node=CondexConfig)


def load_config(overrides: list[str] | None = None, config_name: str = "condex") -> CondexConfig:
    """Compose ``configs/<config_name>.yaml`` with Hydra (plus ``key=value`` overrides) into a validated config."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    register_schema()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
            composed = compose(config_name=config_name, overrides=list(overrides or []))
    except (HydraException, OmegaConfBaseException) as exc:
        cause = f" ({exc.__cause__})" if exc.__cause__ else ""
        raise ConfigError(f"bad configuration override: {exc}{cause}") from None
    values = OmegaConf.to_container(composed, resolve=True)
    assert isinstance(values, dict)
    values.pop("setting", None)
    values.pop("hydra", None)
    return from_dict(values).validate()


def to_flat(cfg: CondexConfig) -> dict[str, Any]:
    """``{"section.kebab-key": value}`` as written in ``[tool.flwr.app.config]``."""
    flat: dict[str, Any] = {}
    for name, value in dataclasses.asdict(cfg).items():
        if name in SECTIONS:
            flat.update({f"{name}.{k.replace('_', '-')}": v for k, v in value.items()})
        else:
            flat[name.replace("_", "-")] = value
    return flat


__all__ = [
    "CondenseConfig", "CondexConfig", "DataConfig", "DistillConfig", "FederationConfig", "TeacherConfig",
    "apply_overrides", "from_dict", "load_config", "register_schema", "to_flat",
]
