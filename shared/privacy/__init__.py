"""Differential privacy for condensation: accounting (Opacus RDP) and the Gaussian mechanism on class sums.

Neighbouring relation everywhere in condex: two local datasets are neighbours when one is the other with
one record (image and label) added or removed ("add/remove", unbounded DP), which is the relation
Opacus' Poisson-subsampled Gaussian RDP analysis assumes. Dataset size and per-class counts set the sampling
rate and the normaliser, as in DP-SGD, so the analysis treats them as public: it does not cover them, which
is why a DP payload does not carry them (docs/privacy.md, "What a payload reveals"). Poisson masks and noise come from
``secret_generator`` (OS entropy), never from ``condense.seed``. A site's lifetime budget is kept in a
``PrivacyLedger`` (``ledger.py``), which composes the RDP parameters of every released run.
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
from shared.privacy.ledger import LedgerEntry, PrivacyLedger, compose, lifetime_epsilon
from shared.privacy.mechanisms import clip_rows, noisy_class_sums, poisson_mask
from shared.privacy.plan import PrivacyPlan, plan_privacy
from shared.privacy.secure_rng import NOISE_SOURCE, secret_generator

__all__ = [
    "NEIGHBOURING_RELATION", "NOISE_SOURCE", "Accountant", "LedgerEntry", "Mechanism", "PrivacyLedger",
    "PrivacyPlan", "accountant_names", "calibrate_noise_multiplier", "clip_rows", "compose", "epsilon_for",
    "lifetime_epsilon", "make_accountant", "noisy_class_sums", "plan_privacy", "poisson_mask", "secret_generator",
]
