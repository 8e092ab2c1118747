"""ROC figures of a membership-inference attack: AUC and TPR at a fixed low FPR.

Scores are "higher = more likely a member". TPR at FPR ``f`` is the largest TPR among thresholds whose FPR
is at most ``f`` (Carlini et al. 2022 report it this way); with ``n`` non-members the smallest FPR above 0
is ``1/n``, so ``fpr_resolution`` is returned beside the figures and a 0.1% figure from fewer than 1000
non-members only says what happens at FPR 0."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

from shared.errors import CondexError

LOW_FPRS = (0.01, 0.001)


@dataclass(frozen=True)
class AttackResult:
    """One attack's ROC summary on ``members`` members and ``non_members`` non-members."""

    name: str
    auc: float
    tpr_at_1pct_fpr: float
    tpr_at_01pct_fpr: float
    members: int
    non_members: int
    note: str = ""

    @property
    def fpr_resolution(self) -> float:
        return 1.0 / self.non_members

    def to_dict(self) -> dict[str, float | int | str]:
        return {"name": self.name, "auc": self.auc, "tpr_at_1pct_fpr": self.tpr_at_1pct_fpr,
                "tpr_at_01pct_fpr": self.tpr_at_01pct_fpr, "members": self.members,
                "non_members": self.non_members, "fpr_resolution": self.fpr_resolution, "note": self.note}


def tpr_at_fpr(fpr: np.ndarray, tpr: np.ndarray, target: float) -> float:
    """Largest TPR whose FPR is <= ``target`` (0 when even the strictest threshold exceeds it)."""
    allowed = fpr <= target + 1e-12
    return float(tpr[allowed].max()) if allowed.any() else 0.0


def evaluate_attack(name: str, member_scores: np.ndarray, non_member_scores: np.ndarray,
                    note: str = "") -> AttackResult:
    """AUC and TPR at 1% / 0.1% FPR of scores where higher means "member"."""
    member_scores = np.asarray(member_scores, dtype=np.float64).ravel()
    non_member_scores = np.asarray(non_member_scores, dtype=np.float64).ravel()
    if member_scores.size == 0 or non_member_scores.size == 0:
        raise CondexError(f"{name}: needs at least one member and one non-member candidate, got "
                          f"{member_scores.size} and {non_member_scores.size}")
    scores = np.concatenate([member_scores, non_member_scores])
    if not np.isfinite(scores).all():  # a NaN would silently rank anywhere: refuse it
        raise CondexError(f"{name}: attack scores contain NaN or infinity")
    truth = np.concatenate([np.ones(member_scores.size), np.zeros(non_member_scores.size)])
    fpr, tpr, _ = roc_curve(truth, scores)
    return AttackResult(name, float(roc_auc_score(truth, scores)), tpr_at_fpr(fpr, tpr, LOW_FPRS[0]),
                        tpr_at_fpr(fpr, tpr, LOW_FPRS[1]), int(member_scores.size), int(non_member_scores.size),
                        note)
