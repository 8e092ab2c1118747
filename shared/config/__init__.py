"""Typed configuration shared by the CLI, Hydra entry points and the Flower apps.

One source of defaults: the dataclasses below give generic defaults, ``configs/`` (Hydra) composes the
FMNIST-CPU setting on top of them, and ``[tool.flwr.app.config]`` mirrors the composed result with
``section.kebab-key`` names (a test keeps the mirror equal)."""

from __future__ import annotations

import copy
import dataclasses
import functools
import types
import typing
from collections.abc import Mapping
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
DEFAULT_SETTING = "fmnist_cpu"


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
    # which configs/setting/<name>.yaml was composed (each setting file names itself); a Flower run config's
    # `setting = "cifar10_gpu"` recomposes from that file (shared.config.runconfig)
    setting: str = DEFAULT_SETTING
    tensorboard: bool = False  # also log a run's metrics as TensorBoard events (the `tensorboard` extra)

    def validate(self) -> CondexConfig:
        check_setting(self.setting)
        if not isinstance(self.tensorboard, bool):
            raise ConfigError(f"tensorboard={self.tensorboard!r} must be true or false")
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
                raise ConfigError(f"unknown config key {raw_key!r}; top-level keys are "
                                  f"{', '.join(k for k in top if k not in SECTIONS)}")
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


def setting_names() -> list[str]:
    """The settings ``configs/setting/*.yaml`` defines (``fmnist_cpu``, ``cifar10_gpu``, ...)."""
    return sorted(p.stem for p in (CONFIG_DIR / "setting").glob("*.yaml"))


def check_setting(name: object) -> str:
    """``name`` if it is a setting file of ``configs/setting/``, else a ``ConfigError`` listing them."""
    if not isinstance(name, str) or name not in setting_names():
        raise ConfigError(f"setting={name!r} is unknown; choose one of {', '.join(setting_names())} "
                          f"(files in {CONFIG_DIR / 'setting'})")
    return name


def load_config(overrides: list[str] | None = None, config_name: str = "condex",
                setting: str | None = None) -> CondexConfig:
    """Compose ``configs/<config_name>.yaml`` with Hydra (plus ``key=value`` overrides) into a validated config;
    ``setting`` picks ``configs/setting/<setting>.yaml`` instead of the default one."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    register_schema()
    if setting is not None:
        overrides = [f"setting={check_setting(setting)}", *(overrides or [])]
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
            composed = compose(config_name=config_name, overrides=list(overrides or []))
    except (HydraException, OmegaConfBaseException) as exc:
        cause = f" ({exc.__cause__})" if exc.__cause__ else ""
        raise ConfigError(f"bad configuration override: {exc}{cause}") from None
    values = OmegaConf.to_container(composed, resolve=True)
    assert isinstance(values, dict)
    if not isinstance(values.get("setting"), str):  # each setting file names itself; a stray group node does not
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


def flower_values(flat: Mapping[str, Any]) -> dict[str, bool | int | float | str]:
    """Run-config compatible values: None -> "" and lists -> "a,b" (what ``apply_overrides`` reads back)."""
    out: dict[str, bool | int | float | str] = {}
    for key, value in flat.items():
        if value is None:
            out[key] = ""
        elif isinstance(value, list | tuple):
            out[key] = ",".join(str(v) for v in value)
        else:
            out[key] = value
    return out


@functools.lru_cache(maxsize=8)
def _composed(setting: str) -> CondexConfig:
    return load_config(setting=setting)


def config_for_run(run_config: Mapping[str, Any], *layers: Mapping[str, Any] | None) -> CondexConfig:
    """The configuration of a Flower run: the setting named by ``setting`` (in the run config or a later layer;
    default ``fmnist_cpu``) composed from ``configs/``, then the run-config entries that differ from
    ``[tool.flwr.app.config]``, then each layer in order (programmatic overrides, a server's request); validated.

    Flower hands every run-config key to the apps, the defaults of ``pyproject.toml`` included; that mirror is
    the default setting's composition, so an entry equal to it is Flower's default, not a choice, and does not
    override another setting (an override equal to the FMNIST value is therefore the setting's value)."""
    extra = [dict(layer or {}) for layer in layers]
    setting: Any = DEFAULT_SETTING
    for source in (run_config, *extra):
        setting = source.get("setting", setting)
    cfg = copy.deepcopy(_composed(check_setting(setting)))
    mirror = flower_values(to_flat(_composed(DEFAULT_SETTING)))
    chosen = {k: v for k, v in run_config.items() if k != "setting" and mirror.get(k) != v}
    apply_overrides(cfg, chosen)
    for layer in extra:
        apply_overrides(cfg, {k: v for k, v in layer.items() if k != "setting"})
    return cfg.validate()


__all__ = [
    "DEFAULT_SETTING", "CondenseConfig", "CondexConfig", "DataConfig", "DistillConfig", "FederationConfig",
    "TeacherConfig", "apply_overrides", "check_setting", "config_for_run", "flower_values", "from_dict",
    "load_config", "register_schema", "setting_names", "to_flat",
]
