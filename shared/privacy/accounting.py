"""Privacy accounting behind one small interface; the ``rdp`` accountant wraps Opacus' RDP analysis.

Each noisy release in condensation is one Poisson-subsampled Gaussian mechanism: every local record is
included with probability ``sample_rate``, each included record's contribution is clipped to L2 norm
``clip``, and Gaussian noise of std ``noise_multiplier * clip`` is added to the sum. The accountant
composes these over all steps and reports (epsilon, delta) under add/remove-one-record neighbouring.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from opacus.accountants import RDPAccountant as _OpacusRDP
from opacus.accountants.utils import get_noise_multiplier

from shared.errors import ConfigError
from shared.registry import Registry

NEIGHBOURING_RELATION = "add/remove one record (unbounded DP); dataset size and class counts treated as public"


@dataclass(frozen=True)
class Mechanism:
    """``steps`` repetitions of the subsampled Gaussian mechanism with these parameters."""

    noise_multiplier: float
    sample_rate: float
    steps: int


class Accountant(Protocol):
    """Composes subsampled Gaussian mechanisms and reports epsilon for a delta."""

    name: str

    def step(self, noise_multiplier: float, sample_rate: float, steps: int = 1) -> None: ...

    def epsilon(self, delta: float) -> float: ...

    @property
    def history(self) -> list[Mechanism]: ...


accountants: Registry[type] = Registry("privacy accountant")


@accountants.register("rdp")
class RDPAccounting:
    """Rényi-DP accounting of Opacus (Mironov et al. 2019) for the Poisson-subsampled Gaussian mechanism."""

    name = "rdp"

    def __init__(self) -> None:
        self._opacus = _OpacusRDP()

    def step(self, noise_multiplier: float, sample_rate: float, steps: int = 1) -> None:
        _check_mechanism(noise_multiplier, sample_rate)
        if steps < 0:
            raise ConfigError(f"steps={steps} must be >= 0")
        if steps == 0:
            return
        history = self._opacus.history
        if history and history[-1][:2] == (noise_multiplier, sample_rate):
            history[-1] = (noise_multiplier, sample_rate, history[-1][2] + steps)
        else:  # same (sigma, q, steps) triples Opacus' own step() would build one call at a time
            history.append((noise_multiplier, sample_rate, steps))

    def epsilon(self, delta: float) -> float:
        if not 0.0 < delta < 1.0:
            raise ConfigError(f"delta={delta} must be in (0, 1)")
        if not self._opacus.history:
            return 0.0
        return float(self._opacus.get_epsilon(delta))

    @property
    def history(self) -> list[Mechanism]:
        return [Mechanism(float(s), float(q), int(n)) for s, q, n in self._opacus.history]


def accountant_names() -> list[str]:
    return accountants.names()


def make_accountant(name: str = "rdp") -> Accountant:
    return accountants.get(name)()


def epsilon_for(noise_multiplier: float, sample_rate: float, steps: int, delta: float,
                accountant: str = "rdp") -> float:
    """Epsilon after ``steps`` releases of one subsampled Gaussian mechanism."""
    acc = make_accountant(accountant)
    acc.step(noise_multiplier, sample_rate, steps)
    return acc.epsilon(delta)


def calibrate_noise_multiplier(target_epsilon: float, delta: float, sample_rate: float, steps: int,
                               accountant: str = "rdp", tolerance: float = 0.01) -> float:
    """The smallest noise multiplier whose epsilon after ``steps`` releases is at most ``target_epsilon``."""
    if not target_epsilon > 0:
        raise ConfigError(f"condense.epsilon={target_epsilon} must be > 0")
    _check_mechanism(1.0, sample_rate)
    if steps < 1:
        raise ConfigError(f"steps={steps} must be >= 1 to calibrate a noise multiplier")
    accountants.get(accountant)  # clear error for unknown names
    sigma = get_noise_multiplier(target_epsilon=target_epsilon, target_delta=delta, sample_rate=sample_rate,
                                 steps=steps, accountant=accountant, epsilon_tolerance=tolerance)
    return float(sigma)


def _check_mechanism(noise_multiplier: float, sample_rate: float) -> None:
    if not noise_multiplier > 0:
        raise ConfigError(f"condense.noise_multiplier={noise_multiplier} must be > 0")
    if not 0.0 < sample_rate <= 1.0:
        raise ConfigError(f"condense.sample_rate={sample_rate} must be in (0, 1]")
