"""Errors raised on bad input. Each message names the offending field and how to fix it."""

from __future__ import annotations


class CondexError(Exception):
    """Base class of every error condex raises on bad input."""


class ConfigError(CondexError, ValueError):
    """A configuration value is missing, of the wrong type or out of range."""


class DataError(CondexError, ValueError):
    """A dataset cannot be found, read or partitioned as requested."""


class PayloadError(CondexError, ValueError):
    """A condensed payload is malformed; the message names the field."""


class GeneratorPayloadError(PayloadError):
    """A generator payload (architecture, options, weights or its probe output) is malformed or not allowed."""


class CheckpointError(CondexError, ValueError):
    """A checkpoint is missing, unreadable or does not match what was asked for."""


class UnknownNameError(CondexError, KeyError):
    """A registry lookup used a name that is not registered."""

    def __str__(self) -> str:  # KeyError quotes its argument; keep the message readable
        return str(self.args[0]) if self.args else ""
