"""Membership inference against a payload and against a student.

The game (Carlini et al. 2022, "Membership inference attacks from first principles"): candidates are the
site's training images (members) and as many of its held-out images (non-members), class-matched
(``balanced_candidates``); an attack scores every candidate, higher = "member", and is judged by ROC AUC
and TPR at 1% / 0.1% FPR (``roc``).

Payload attacks (the server holds the payload and, in the worst case, candidate images):

* **distance**: score = -(L2 distance of the candidate to its nearest payload image), in pixel space and
  in the teacher's feature space.
* **LiRA** (``lira``): the attacker condenses ``shadows`` shadow payloads with the payload's method from
  random class-stratified halves of the candidate pool, in complementary pairs, so every candidate is
  IN exactly half of the shadows and OUT of the other half. The statistic is ``s = -log(d + 1e-6)``,
  ``d`` the candidate's distance to the nearest payload image (the log makes it closer to Gaussian; a copy
  has ``d = 0``). Per candidate, Gaussians are fitted to its IN and OUT statistics; with fewer than
  ``PER_EXAMPLE_VARIANCE_MIN`` shadows every candidate shares one pooled variance per side (Carlini et
  al.'s "global variance", better with few shadows), otherwise each candidate has its own. *Online*
  score: ``log N(s; mu_in, sd_in) - log N(s; mu_out, sd_out)``; *offline* score (OUT fits only, what an
  attacker without IN shadows can do): ``(s - mu_out) / sd_out``.

Student attacks (the server or anyone holding the student):

* **loss**: score = -(cross-entropy of the student on the candidate) (Yeom et al. 2018).
* **LiRA**: the same fits on the logit-scaled confidence ``log p_y - log(1 - p_y)`` of shadow students,
  each trained by a caller-supplied function on one half of the pool (``student_lira``).

Shadows are audit-internal: they never leave the site and are not charged to its privacy ledger."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from shared.data import LabeledImages
from shared.errors import ConfigError
from shared.privacy.audit.memorization import Embed, nn_distances
from shared.privacy.audit.roc import AttackResult, evaluate_attack

DISTANCE_EPS = 1e-6  # keeps log(d) finite for exact copies (d = 0)
PER_EXAMPLE_VARIANCE_MIN = 16  # shadows below which one pooled variance per side is fitted
ShadowCondense = Callable[[LabeledImages, int], torch.Tensor]  # (training half, shadow index) -> pixels [0, 1]
ShadowTrain = Callable[[LabeledImages, int], nn.Module]  # (training half, shadow index) -> student (eval mode)
Progress = Callable[[], None]


@dataclass(frozen=True)
class Candidates:
    """Class-matched members and non-members: ``pool`` = members then non-members, ``is_member`` a mask."""

    pool: LabeledImages
    is_member: np.ndarray

    @property
    def members(self) -> int:
        return int(self.is_member.sum())

    @property
    def non_members(self) -> int:
        return int((~self.is_member).sum())


def balanced_candidates(members: LabeledImages, non_members: LabeledImages, max_per_side: int = 2000,
                        seed: int = 0) -> Candidates:
    """For each class, as many members as non-members (the smaller count), scaled down to ``max_per_side``
    candidates per side; a class held by only one side is left out (it would be decided by its label)."""
    if max_per_side < 1:
        raise ConfigError(f"max_per_side={max_per_side} must be >= 1 candidates per side")
    rng = np.random.default_rng(seed)
    m_labels, n_labels = members.labels.numpy(), non_members.labels.numpy()
    classes = np.intersect1d(m_labels, n_labels)
    counts = np.array([min((m_labels == c).sum(), (n_labels == c).sum()) for c in classes], dtype=np.int64)
    if counts.sum() == 0:
        raise ConfigError("members and non-members share no class: the held-out split must hold images of the "
                          "classes the site trains on (set data.test_fraction > 0, or give a test split)")
    scale = min(1.0, max_per_side / counts.sum())
    take = np.maximum(1, np.floor(counts * scale)).astype(np.int64)
    m_idx, n_idx = (np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:k]
                                    for c, k in zip(classes, take, strict=True)]) for labels in (m_labels, n_labels))
    pool = LabeledImages(torch.cat([members.images[m_idx], non_members.images[n_idx]]),
                         torch.cat([members.labels[m_idx], non_members.labels[n_idx]]), members.info)
    return Candidates(pool, np.concatenate([np.ones(len(m_idx), bool), np.zeros(len(n_idx), bool)]))


def split(result_name: str, scores: np.ndarray, is_member: np.ndarray, note: str = "") -> AttackResult:
    return evaluate_attack(result_name, scores[is_member], scores[~is_member], note)


# ---- payload attacks -----------------------------------------------------------------------------------
def distance_statistic(candidates: torch.Tensor, payload: torch.Tensor) -> np.ndarray:
    """``-log(d + eps)`` of each candidate row to its nearest payload row (higher = closer)."""
    return -np.log(nn_distances(candidates, payload).double().numpy() + DISTANCE_EPS)


def distance_attack(space: str, candidates: torch.Tensor, payload: torch.Tensor,
                    is_member: np.ndarray) -> AttackResult:
    """Score = -distance to the nearest payload image (``-log`` of it ranks the same)."""
    return split(f"distance/{space}", distance_statistic(candidates, payload), is_member,
                 "score = -distance to the nearest payload image")


def pair_halves(labels: np.ndarray, shadows: int, seed: int) -> np.ndarray:
    """``shadows x N`` IN mask: class-stratified random halves in complementary pairs (each candidate is IN
    in exactly half of the shadows)."""
    if shadows < 2 or shadows % 2:
        raise ConfigError(f"shadows={shadows} must be an even number >= 2 (shadows come in complementary pairs, "
                          "so that every candidate is IN half of them); use 0 to skip LiRA")
    rng = np.random.default_rng(seed)
    masks = np.zeros((shadows, labels.size), dtype=bool)
    for pair in range(shadows // 2):
        inside = np.zeros(labels.size, dtype=bool)
        for c in np.unique(labels):
            idx = rng.permutation(np.flatnonzero(labels == c))
            inside[idx[: (idx.size + rng.integers(0, 2)) // 2]] = True  # odd classes: the extra one either way
        masks[2 * pair], masks[2 * pair + 1] = inside, ~inside
    return masks


def gaussian_fits(stats: np.ndarray, mask: np.ndarray, pooled: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per-candidate mean and std of ``stats`` (shadows x N) where ``mask``; pooled std if asked."""
    count = mask.sum(0)
    mean = np.where(mask, stats, 0.0).sum(0) / np.maximum(count, 1)
    resid = np.where(mask, stats - mean, 0.0)
    if pooled:
        dof = max(int(mask.sum()) - stats.shape[1], 1)
        std = np.full(stats.shape[1], np.sqrt((resid ** 2).sum() / dof))
    else:
        std = np.sqrt((resid ** 2).sum(0) / np.maximum(count - 1, 1))
    floor = 1e-3 * max(float(np.std(stats)), 1e-6)  # a constant statistic must not divide by zero
    return mean, np.maximum(std, floor)


def lira_scores(observed: np.ndarray, shadow_stats: np.ndarray, inside: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(online, offline) LiRA scores of ``observed`` (N,) given shadow statistics and IN masks (S x N)."""
    pooled = shadow_stats.shape[0] < PER_EXAMPLE_VARIANCE_MIN
    mu_in, sd_in = gaussian_fits(shadow_stats, inside, pooled)
    mu_out, sd_out = gaussian_fits(shadow_stats, ~inside, pooled)

    def log_pdf(x: np.ndarray, mu: np.ndarray, sd: np.ndarray) -> np.ndarray:
        return -0.5 * ((x - mu) / sd) ** 2 - np.log(sd)

    return log_pdf(observed, mu_in, sd_in) - log_pdf(observed, mu_out, sd_out), (observed - mu_out) / sd_out


def lira_results(prefix: str, observed: np.ndarray, shadow_stats: np.ndarray, inside: np.ndarray,
                 is_member: np.ndarray) -> list[AttackResult]:
    online, offline = lira_scores(observed, shadow_stats, inside)
    variance = "pooled" if shadow_stats.shape[0] < PER_EXAMPLE_VARIANCE_MIN else "per-candidate"
    note = f"{shadow_stats.shape[0]} shadows, {variance} variance"
    return [split(f"{prefix}/online", online, is_member, note),
            split(f"{prefix}/offline", offline, is_member, note + ", OUT fits only")]


def payload_lira(candidates: Candidates, spaces: Mapping[str, tuple[Embed, np.ndarray]], condense: ShadowCondense,
                 shadows: int, seed: int = 0, tick: Progress | None = None) -> list[AttackResult]:
    """LiRA on a payload. ``spaces``: name -> (embedding of pixels, the target payload's observed
    statistic of every candidate in that space, ``distance_statistic``)."""
    inside = pair_halves(candidates.pool.labels.numpy(), shadows, seed)
    embedded = {name: embed(_pixels(candidates.pool)) for name, (embed, _) in spaces.items()}
    stats = {name: np.empty((shadows, len(candidates.pool))) for name in spaces}
    for s in range(shadows):
        shadow = condense(candidates.pool.subset(np.flatnonzero(inside[s])), s)
        for name, (embed, _) in spaces.items():
            stats[name][s] = distance_statistic(embedded[name], embed(shadow))
        if tick is not None:
            tick()
    results: list[AttackResult] = []
    for name, (_, observed) in spaces.items():
        results += lira_results(f"lira/{name}", observed, stats[name], inside, candidates.is_member)
    return results


def _pixels(data: LabeledImages) -> torch.Tensor:
    return data.images.float().div_(255.0)


# ---- student attacks -----------------------------------------------------------------------------------
@torch.no_grad()
def student_logits(model: nn.Module, data: LabeledImages, mean: tuple[float, ...], std: tuple[float, ...],
                   batch: int = 512) -> torch.Tensor:
    """Logits of ``model`` (eval mode) on ``data`` normalised with the model's own statistics."""
    model.eval()
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    out = [model((_pixels(data.subset(range(i, min(i + batch, len(data))))) - mean_t) / std_t).float()
           for i in range(0, len(data), batch)]
    return torch.cat(out)


def scaled_confidence(logits: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    """``log p_y - log(1 - p_y)``, stably: the true logit minus the log-sum-exp of the others."""
    true = logits.gather(1, labels.view(-1, 1)).squeeze(1)
    others = logits.scatter(1, labels.view(-1, 1), float("-inf")).logsumexp(1)
    return (true - others).double().numpy()


def loss_attack(logits: torch.Tensor, candidates: Candidates) -> AttackResult:
    losses = F.cross_entropy(logits, candidates.pool.labels, reduction="none").double().numpy()
    return split("student/loss", -losses, candidates.is_member, "score = -cross-entropy of the student")


def student_lira(observed_logits: torch.Tensor, candidates: Candidates, train: ShadowTrain, shadows: int,
                 mean: tuple[float, ...], std: tuple[float, ...], seed: int = 0,
                 tick: Progress | None = None) -> list[AttackResult]:
    """LiRA on a student: shadow students from ``train(half, index)``, statistic ``scaled_confidence``."""
    labels = candidates.pool.labels
    inside = pair_halves(labels.numpy(), shadows, seed)
    stats = np.empty((shadows, len(candidates.pool)))
    for s in range(shadows):
        model = train(candidates.pool.subset(np.flatnonzero(inside[s])), s)
        stats[s] = scaled_confidence(student_logits(model, candidates.pool, mean, std), labels)
        if tick is not None:
            tick()
    observed = scaled_confidence(observed_logits, labels)
    return lira_results("student/lira", observed, stats, inside, candidates.is_member)
