"""One call per audited object: ``audit_payload`` (memorisation + payload attacks) and ``audit_student``.

Both take the site's members (its training images: what the payload was condensed from, or what the
student should not reveal) and non-members (its held-out images), draw class-matched candidates from
them (``mia.balanced_candidates``) and return an ``AuditReport``. Everything runs on CPU tensors; the
expensive parts (shadow payloads, shadow students) come from caller-supplied functions, so this library
does not depend on the condensers or the trainer."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from shared.data import LabeledImages
from shared.errors import ConfigError
from shared.privacy.audit import mia
from shared.privacy.audit.memorization import Embed, flat_pixels, memorization, nn_distances, pixels
from shared.privacy.audit.report import AuditReport

Tick = Callable[[], None]


@dataclass(frozen=True)
class AuditSettings:
    """Knobs of one audit. ``shadows``: shadow payloads/students for LiRA (0: no LiRA; even otherwise)."""

    shadows: int = 0
    max_candidates: int = 2000  # per side (members, non-members)
    seed: int = 0

    def validate(self) -> AuditSettings:
        if self.shadows < 0 or (self.shadows and self.shadows % 2):
            raise ConfigError(f"shadows={self.shadows} must be 0 (no LiRA) or an even number >= 2 (complementary "
                              "pairs of shadows)")
        if self.max_candidates < 10:
            raise ConfigError(f"max_candidates={self.max_candidates} must be >= 10 per side; 1000+ for a TPR at "
                              "0.1% FPR that means anything")
        return self

    def to_dict(self) -> dict[str, int]:
        return {"shadows": self.shadows, "max_candidates": self.max_candidates, "seed": self.seed}


def spaces_of(teacher: Embed | None) -> dict[str, Embed]:
    """Pixel space always; the teacher's feature space when a teacher embedding is given."""
    spaces: dict[str, Embed] = {"pixel": flat_pixels}
    if teacher is not None:
        spaces["feature"] = teacher
    return spaces


def check_images(name: str, images: torch.Tensor, like: LabeledImages) -> None:
    if images.ndim != 4 or tuple(images.shape[1:]) != tuple(like.images.shape[1:]) or images.shape[0] == 0:
        raise ConfigError(f"{name}: images of shape {tuple(images.shape)} do not fit the site's data "
                          f"(N x {' x '.join(map(str, like.images.shape[1:]))}); audit a payload of this dataset")


def audit_payload(payload: torch.Tensor, members: LabeledImages, non_members: LabeledImages,
                  settings: AuditSettings = AuditSettings(), teacher: Embed | None = None,
                  shadow_condense: mia.ShadowCondense | None = None, subject: dict | None = None,
                  tick: Tick | None = None) -> AuditReport:
    """Audit ``payload`` (pixels in [0, 1], N x C x H x W) against the site's data. With ``settings.shadows``
    > 0, ``shadow_condense(half, index)`` must return the pixels of a payload condensed like ``payload``."""
    settings.validate()
    check_images("payload", payload, members)
    if settings.shadows and shadow_condense is None:
        raise ConfigError(f"shadows={settings.shadows} needs a shadow condenser (the payload's method)")
    start = time.perf_counter()
    candidates = mia.balanced_candidates(members, non_members, settings.max_candidates, settings.seed)
    held_out = candidates.pool.subset(np.flatnonzero(~candidates.is_member))
    report = AuditReport(subject=dict(subject or {"images": int(payload.shape[0])}),
                         site=site_summary(members, non_members, candidates), settings=settings.to_dict())
    spaces = spaces_of(teacher)
    observed: dict[str, np.ndarray] = {}
    for name, embed in spaces.items():
        train_rows, payload_rows = embed(pixels(members)), embed(payload)
        report.memorization.append(memorization(name, payload_rows, train_rows, embed(pixels(held_out))))
        candidate_rows = embed(pixels(candidates.pool))
        report.attacks.append(mia.distance_attack(name, candidate_rows, payload_rows, candidates.is_member))
        observed[name] = mia.distance_statistic(candidate_rows, payload_rows)
        if tick is not None:
            tick()
    if settings.shadows and shadow_condense is not None:
        report.attacks += mia.payload_lira(candidates, {n: (spaces[n], observed[n]) for n in spaces},
                                           shadow_condense, settings.shadows, settings.seed, tick)
    report.seconds = time.perf_counter() - start
    return report


def audit_student(model: nn.Module, mean: tuple[float, ...], std: tuple[float, ...], members: LabeledImages,
                  non_members: LabeledImages, settings: AuditSettings = AuditSettings(),
                  shadow_train: mia.ShadowTrain | None = None, report: AuditReport | None = None,
                  tick: Tick | None = None) -> AuditReport:
    """Loss-threshold and (with ``settings.shadows`` and ``shadow_train``) LiRA attacks on a student, added
    to ``report`` (a payload audit of the same site) or to a new one."""
    settings.validate()
    start = time.perf_counter()
    candidates = mia.balanced_candidates(members, non_members, settings.max_candidates, settings.seed)
    if report is None:
        report = AuditReport(subject={"student": type(model).__name__},
                             site=site_summary(members, non_members, candidates), settings=settings.to_dict())
    logits = mia.student_logits(model, candidates.pool, mean, std)
    report.student_attacks.append(mia.loss_attack(logits, candidates))
    if settings.shadows and shadow_train is not None:
        report.student_attacks += mia.student_lira(logits, candidates, shadow_train, settings.shadows, mean, std,
                                                   settings.seed, tick)
    report.seconds += time.perf_counter() - start
    return report


def site_summary(members: LabeledImages, non_members: LabeledImages, candidates: mia.Candidates) -> dict:
    return {"members": len(members), "non_members": len(non_members), "candidates_per_side": candidates.members}


__all__ = ["AuditSettings", "audit_payload", "audit_student", "nn_distances"]
