"""Type checks every config section runs first: each field holds a value of its declared type.

A boolean is not an integer here (``condense.ipc=true`` would otherwise be IPC 1), and every float is finite:
NaN passes every ``value <= 0`` test and infinity every ``value > 0`` test, so range checks alone let them
through into training. Each section's ``validate`` calls ``check_types`` before its own range checks."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any

from shared.errors import ConfigError


def check_types(section: Any, prefix: str) -> None:
    """Raise ``ConfigError`` naming ``prefix.field`` for the first field whose value does not fit its type."""
    hints = typing.get_type_hints(type(section))
    for f in dataclasses.fields(section):
        check_value(f"{prefix}.{f.name}", getattr(section, f.name), hints[f.name])


def check_value(key: str, value: Any, kind: Any) -> None:
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        return check_value(key, value, args[0])
    if origin is dict or kind is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}={value!r} must be a mapping")
        return
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}={value!r} must be a list")
        (item, *_) = typing.get_args(kind) or (Any,)
        for entry in value:
            check_value(key, entry, item)
        return
    if kind is bool and not isinstance(value, bool):
        raise ConfigError(f"{key}={value!r} must be true or false")
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{key}={value!r} must be an integer (not a boolean or a fraction)")
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}={value!r} must be a number")
        if not math.isfinite(value):
            raise ConfigError(f"{key}={value!r} must be a finite number (NaN and infinity are not settings)")
    if kind is str and not isinstance(value, str):
        raise ConfigError(f"{key}={value!r} must be a string")
