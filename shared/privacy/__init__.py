"""Differential privacy for condensation: accounting (Opacus RDP) and the Gaussian mechanism on class sums.

Neighbouring relation everywhere in condex: two local datasets are neighbours when one is the other with
one record (image and label) added or removed ("add/remove", unbounded DP), which is the relation
Opacus' Poisson-subsampled Gaussian RDP analysis assumes. Dataset size and per-class counts are treated
as public, as in DP-SGD (they set the sampling rate and the normaliser). Poisson masks and noise come from
``secret_generator`` (OS entropy), never from ``condense.seed``.
"""

from shared.privacy.accounting import (
    NEIGHBOURING_RELATION,
    Accountant,
    Mechanism,
    accountant_names,
    calibrate_noise_multiplier,
    epsilon_for,
    make_accountant,
)
from shared.privacy.mechanisms import clip_rows, noisy_class_sums, poisson_mask
from shared.privacy.plan import PrivacyPlan, plan_privacy
from shared.privacy.secure_rng import NOISE_SOURCE, secret_generator

__all__ = [
    "NEIGHBOURING_RELATION", "NOISE_SOURCE", "Accountant", "Mechanism", "PrivacyPlan", "accountant_names",
    "calibrate_noise_multiplier", "clip_rows", "epsilon_for", "make_accountant", "noisy_class_sums", "plan_privacy",
    "poisson_mask", "secret_generator",
]
