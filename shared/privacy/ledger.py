"""A site's privacy ledger: every run it released, with the exact RDP parameters, composed across runs.

A payload states only (epsilon, delta) of its own run, and (epsilon, delta) pairs compose loosely. The
ledger keeps, for each released run, the mechanisms the RDP accountant charged (noise multiplier,
sample rate, steps: ``shared.privacy.accounting.Mechanism``), so the site's lifetime epsilon is the RDP
composition of all its runs converted once at ``lifetime_delta``: the same number Opacus' RDP accountant
gives for one history holding every step of every run. A non-DP run is recorded too (``dp: false``); from
then on the lifetime epsilon is infinite, because that release had no bound.

File format (JSON, one file per site, written only by ``charge``)::

    {"format": "condex-privacy-ledger", "version": 1, "accountant": "rdp",
     "entries": [{"id": "...", "time": "2026-12-02T10:00:00+00:00", "method": "dp-dm", "dp": true,
                  "epsilon": 7.98, "delta": 1e-05,
                  "mechanisms": [{"noise_multiplier": 1.1, "sample_rate": 0.32, "steps": 300}], "note": "..."}]}

The ledger stays at the site: it holds the sample rate, which can reveal the number of local records.

Writing is crash-safe and serialised: ``charge`` holds an exclusive ``flock`` on ``<ledger>.lock`` while it
reads the ledger, composes, decides and writes; the new content goes to a temporary file in the same
directory, is flushed and ``fsync``-ed, then ``os.replace``-d onto the ledger and the directory is
fsync-ed. A crash before the rename leaves the old ledger intact (at worst a stale temporary file, which
the next write removes under the lock); a crash after it leaves the new one. A ledger that cannot be read
is an error, never an empty ledger: forgetting spent budget would break the lifetime bound."""

from __future__ import annotations

import fcntl
import json
import math
import os
import tempfile
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from shared.errors import ConfigError
from shared.privacy.accounting import Mechanism, make_accountant

LEDGER_FORMAT = "condex-privacy-ledger"
LEDGER_VERSION = 1
ACCOUNTANT = "rdp"  # the only accountant whose per-run parameters compose exactly here


@dataclass(frozen=True)
class LedgerEntry:
    """One released run."""

    method: str
    dp: bool
    mechanisms: tuple[Mechanism, ...] = ()
    epsilon: float | None = None  # the run's own epsilon at its own delta (what its payload said)
    delta: float | None = None
    note: str = ""
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    time: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "time": self.time, "method": self.method, "dp": self.dp}
        if self.dp:
            out |= {"epsilon": self.epsilon, "delta": self.delta,
                    "mechanisms": [{"noise_multiplier": m.noise_multiplier, "sample_rate": m.sample_rate,
                                    "steps": m.steps} for m in self.mechanisms]}
        return out | {"note": self.note}


@dataclass(frozen=True)
class Charge:
    """What ``charge`` (or ``preview``) found: the lifetime epsilon before and with the run."""

    before: float
    after: float
    runs: int  # runs recorded before this one


def compose(mechanisms: Sequence[Mechanism], delta: float) -> float:
    """Epsilon at ``delta`` of all ``mechanisms`` composed under RDP (0 for none)."""
    accountant = make_accountant(ACCOUNTANT)
    for m in mechanisms:
        accountant.step(m.noise_multiplier, m.sample_rate, m.steps)
    return accountant.epsilon(delta)


def lifetime_epsilon(entries: Sequence[LedgerEntry], delta: float) -> float:
    """The composed epsilon of ``entries`` at ``delta``; infinite once any entry was not DP."""
    if any(not e.dp for e in entries):
        return math.inf
    return compose([m for e in entries for m in e.mechanisms], delta)


class PrivacyLedger:
    """The ledger file at ``path`` (created by the first ``charge``)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser().absolute()
        self.lock_path = self.path.with_name(self.path.name + ".lock")

    # ---- reading -----------------------------------------------------------------------------------------
    def entries(self) -> list[LedgerEntry]:
        """Every recorded run (none if the file does not exist yet); ``ConfigError`` if it is unreadable."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise self._broken(f"cannot be read ({exc})") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise self._broken(f"is not valid JSON ({exc})") from None
        if not isinstance(data, dict) or data.get("format") != LEDGER_FORMAT:
            raise self._broken(f"is not a condex privacy ledger (format must be {LEDGER_FORMAT!r})")
        if data.get("version") != LEDGER_VERSION or data.get("accountant") != ACCOUNTANT:
            raise self._broken(f"has version={data.get('version')!r} accountant={data.get('accountant')!r}; this "
                               f"condex reads version {LEDGER_VERSION} with the {ACCOUNTANT!r} accountant")
        raw = data.get("entries")
        if not isinstance(raw, list):
            raise self._broken("has no 'entries' list")
        return [self._entry(i, item) for i, item in enumerate(raw)]

    def preview(self, entry: LedgerEntry, delta: float) -> Charge:
        """The lifetime epsilon with ``entry`` added, without recording it (no lock: advisory only)."""
        entries = self.entries()
        return Charge(lifetime_epsilon(entries, delta), lifetime_epsilon([*entries, entry], delta), len(entries))

    # ---- writing -----------------------------------------------------------------------------------------
    def charge(self, entry: LedgerEntry, delta: float, budget: float | None,
               refuse: Callable[[Charge], Exception] | None = None) -> Charge:
        """Record ``entry`` unless the lifetime epsilon with it would exceed ``budget``; then ``refuse(charge)``
        is raised (an exception built by the caller, e.g. a ``PolicyRefusal``) and nothing is written.
        Reading, deciding and writing happen under one exclusive lock, so concurrent runs at the site cannot
        both spend the last of the budget."""
        with self._locked():
            entries = self.entries()
            result = Charge(lifetime_epsilon(entries, delta), lifetime_epsilon([*entries, entry], delta), len(entries))
            if budget is not None and not result.after <= budget:
                raise refuse(result) if refuse else ConfigError(
                    f"privacy ledger {self.path}: lifetime epsilon {result.after:.4g} would exceed {budget:g}")
            self._write([*entries, entry])
        return result

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def _write(self, entries: Sequence[LedgerEntry]) -> None:
        """Atomic replace: temp file in the same directory, fsync, os.replace, fsync the directory."""
        body = {"format": LEDGER_FORMAT, "version": LEDGER_VERSION, "accountant": ACCOUNTANT,
                "entries": [e.to_dict() for e in entries]}
        text = json.dumps(body, indent=2, allow_nan=False) + "\n"
        for stale in self.path.parent.glob(f".{self.path.name}.*.tmp"):  # left by a writer that crashed
            stale.unlink(missing_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _fsync_dir(self.path.parent)

    # ---- helpers -----------------------------------------------------------------------------------------
    def _broken(self, problem: str) -> ConfigError:
        return ConfigError(f"privacy ledger {self.path} {problem}; the budget this site has spent is unknown, so "
                           "nothing is released: restore the file from a backup (never replace it with an empty "
                           "one unless no payload was ever released under it)")

    def _entry(self, index: int, item: Any) -> LedgerEntry:
        where = f"entries[{index}]"
        if not isinstance(item, dict) or not isinstance(item.get("method"), str) or not isinstance(item.get("dp"),
                                                                                                     bool):
            raise self._broken(f"{where} needs a 'method' string and a 'dp' boolean")
        if not item["dp"]:
            return LedgerEntry(item["method"], False, note=str(item.get("note", "")), id=str(item.get("id", "")),
                               time=str(item.get("time", "")))
        mechanisms = item.get("mechanisms")
        if not isinstance(mechanisms, list):
            raise self._broken(f"{where}: a DP entry needs a 'mechanisms' list")
        parsed = tuple(self._mechanism(f"{where}.mechanisms[{k}]", m) for k, m in enumerate(mechanisms))
        eps, delta = item.get("epsilon"), item.get("delta")
        if not _finite_number(eps) or not _finite_number(delta):
            raise self._broken(f"{where}: 'epsilon' and 'delta' must be finite numbers")
        return LedgerEntry(item["method"], True, parsed, float(eps), float(delta), str(item.get("note", "")),
                           str(item.get("id", "")), str(item.get("time", "")))

    def _mechanism(self, where: str, item: Any) -> Mechanism:
        if not isinstance(item, dict):
            raise self._broken(f"{where} must be an object")
        sigma, rate, steps = item.get("noise_multiplier"), item.get("sample_rate"), item.get("steps")
        if not (_finite_number(sigma) and sigma > 0 and _finite_number(rate) and 0 < rate <= 1
                and isinstance(steps, int) and not isinstance(steps, bool) and steps >= 0):
            raise self._broken(f"{where} must have noise_multiplier > 0, sample_rate in (0, 1] and integer steps >= 0")
        return Mechanism(float(sigma), float(rate), int(steps))


def _finite_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
