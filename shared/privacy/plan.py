"""A DP run's plan: sampling rate and noise multiplier fixed up front, the accountant fed as releases happen.

``plan_privacy`` picks the Poisson sampling rate (``condense.sample_rate`` or ``batch_real`` records per
held class on average) and the noise multiplier (``condense.noise_multiplier``, or calibrated so that the
planned number of releases reaches ``condense.epsilon``). Each ``record_release`` charges the accountant;
with ``class_composition=parallel`` one release of all class sums is one mechanism (classes are disjoint
sets of records), with ``sequential`` every class is charged as a separate mechanism (conservative).
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.config.condense import CondenseConfig
from shared.privacy.accounting import Accountant, calibrate_noise_multiplier, make_accountant


@dataclass
class PrivacyPlan:
    noise_multiplier: float
    sample_rate: float
    clip: float
    delta: float
    charges_per_release: int  # accountant steps per release (1 parallel, number of classes sequential)
    accountant: Accountant

    @property
    def noise_std(self) -> float:
        """Std of the Gaussian noise added to each coordinate of a clipped sum."""
        return self.noise_multiplier * self.clip

    def record_release(self) -> None:
        self.accountant.step(self.noise_multiplier, self.sample_rate, self.charges_per_release)

    @property
    def steps(self) -> int:
        return sum(m.steps for m in self.accountant.history)

    def epsilon(self) -> float:
        return self.accountant.epsilon(self.delta)


def plan_privacy(cfg: CondenseConfig, num_records: int, num_groups: int, releases: int) -> PrivacyPlan:
    """Plan ``releases`` noisy releases over ``num_records`` local records in ``num_groups`` classes."""
    sample_rate = cfg.sample_rate or min(1.0, cfg.batch_real * num_groups / max(num_records, 1))
    charges = 1 if cfg.class_composition == "parallel" else num_groups
    if cfg.noise_multiplier > 0:
        sigma = float(cfg.noise_multiplier)
    else:  # CondenseConfig.validate guarantees epsilon > 0 here
        sigma = calibrate_noise_multiplier(cfg.epsilon, cfg.delta, sample_rate, releases * charges, cfg.accountant)
    return PrivacyPlan(sigma, sample_rate, cfg.clip, cfg.delta, charges, make_accountant(cfg.accountant))
