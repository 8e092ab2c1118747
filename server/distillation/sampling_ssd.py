"""``sampler = ssd``: class re-weighting by diversity and difficulty, and priority sampling of KD batches,
after SSD-KD (Liu et al., "Small Scale Data-Free Knowledge Distillation", CVPR 2024; summary in
``../shared/papers/002_*``).

SSD-KD's code is not public and the summary we have gives the ideas, not the formulas. What is
implemented here, precisely (our own formulation of those ideas):

1. **Difficulty** of a pool sample = its last per-sample KD loss, i.e. T^2 KL(teacher || student), the
   teacher-student disagreement, fed back by the distillation loop after every KD step. A class's
   difficulty d_c is the mean over its samples that have been trained on at least once.
2. **Diversity** of a class v_c = the mean squared distance of its samples' z-scored teacher logit vectors
   to their class mean (the trace of the class covariance of the teacher's view). A class whose synthetic
   samples collapsed onto one mode has small v_c. The cached teacher logits are used: no extra forward.
3. **Modulating function** (class weights):
   w_c ~ (d_c / mean d)^a * (mean v / v_c)^b, normalised to sum 1 over the classes present in the pool,
   then mixed with the uniform distribution: w <- (1 - eps) w + eps / C_present, so no class starves.
   a = ``ssd_difficulty_power``, b = ``ssd_diversity_power``, eps = ``ssd_uniform_mix``. Hard and
   under-diverse classes get more of every KD batch.
4. **Priority sampling** within a class (prioritised-replay style): P(i | c) ~ (loss_i + 1e-3)^alpha with
   alpha = ``ssd_priority_power``; a sample not yet trained on (new, or a slot the pool overwrote) gets the
   largest priority seen so far, so every new sample is visited soon. Overall P(i) = w_c(i) P(i | c(i)),
   drawn with replacement.

Not implemented (and why): SSD-KD's modulation of the *inversion* loss (our base methods draw balanced
pseudo-classes in ``server/inversion/base.py``, which this file does not own), its reinforcement-learning
control of the replay buffer, and importance-sampling correction of the KD loss (the loop averages the
per-sample losses uniformly, so prioritised samples are deliberately emphasised). "Far fewer synthetic
samples" is ``distill.synthetic_budget`` (synthesis stops after that many; with ``pool_cap`` >= it all are
kept); the sampler decides which of those samples to train on."""

from __future__ import annotations

from typing import Any

import torch

from server.distillation.kd_logit_std import standardize_logits
from server.distillation.pool import SamplePool, Sampler, samplers
from shared.config.distill import DistillConfig

PRIORITY_EPS = 1e-3  # a sample the student already matches keeps a small chance of being drawn
RATIO_EPS = 1e-8  # guards ratios of difficulties/diversities that are exactly zero


def class_difficulty(labels: torch.Tensor, priority: torch.Tensor, visited: torch.Tensor,
                     num_classes: int) -> torch.Tensor:
    """Mean last KD loss per class over visited samples; classes without any take the hardest class's."""
    counts = torch.bincount(labels[visited], minlength=num_classes).float()
    sums = torch.bincount(labels[visited], weights=priority[visited].float(), minlength=num_classes)
    known = counts > 0
    difficulty = torch.where(known, sums / counts.clamp(min=1), torch.zeros_like(sums))
    if not known.any():
        return torch.ones(num_classes)
    return torch.where(known, difficulty, difficulty[known].max())


def class_diversity(labels: torch.Tensor, teacher_logits: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Trace of each class's covariance of z-scored teacher logits; classes with < 2 samples get the mean."""
    z = standardize_logits(teacher_logits.float())
    counts = torch.bincount(labels, minlength=num_classes).float()
    sums = torch.zeros(num_classes, z.shape[1]).index_add_(0, labels, z)
    means = sums / counts.clamp(min=1).unsqueeze(1)
    sq = ((z - means[labels]) ** 2).sum(dim=1)
    diversity = torch.bincount(labels, weights=sq, minlength=num_classes) / counts.clamp(min=1)
    enough = counts >= 2
    if not enough.any():
        return torch.ones(num_classes)
    return torch.where(enough, diversity, diversity[enough].mean())


def modulating_weights(difficulty: torch.Tensor, diversity: torch.Tensor, present: torch.Tensor,
                       difficulty_power: float, diversity_power: float, uniform_mix: float) -> torch.Tensor:
    """Class weights (sum 1, zero for classes absent from the pool): favour hard and under-diverse classes."""
    present = present.bool()
    d = difficulty[present].clamp(min=0) + RATIO_EPS
    v = diversity[present].clamp(min=0) + RATIO_EPS
    raw = (d / d.mean()) ** difficulty_power * (v.mean() / v) ** diversity_power
    weights = torch.zeros_like(difficulty, dtype=torch.float32)
    weights[present] = ((1 - uniform_mix) * raw / raw.sum() + uniform_mix / int(present.sum())).float()
    return weights / weights.sum()


@samplers.register("ssd")
class SSDSampler(Sampler):
    """Priority sampler over a ``SamplePool`` with SSD-KD-style class modulation (see the module docstring).

    ``cfg`` supplies the ``ssd_*`` knobs; without it the ``DistillConfig`` defaults apply."""

    def __init__(self, cfg: DistillConfig | None = None) -> None:
        cfg = cfg or DistillConfig()
        self.difficulty_power = cfg.ssd_difficulty_power
        self.diversity_power = cfg.ssd_diversity_power
        self.priority_power = cfg.ssd_priority_power
        self.uniform_mix = cfg.ssd_uniform_mix
        self.priority = torch.empty(0)  # per pool index: last KD loss
        self.visited = torch.empty(0, dtype=torch.bool)
        self.fingerprint = torch.empty(0)  # the teacher logits each index held when last seen
        self.last_weights = torch.empty(0)  # class weights of the last draw (for inspection)

    # -- bookkeeping ----------------------------------------------------------------------------------
    def _pool_view(self, pool: SamplePool) -> tuple[torch.Tensor, torch.Tensor]:
        """Labels and teacher logits of every pool index (condensed first, then synthetic slots), on CPU."""
        labels, logits = [], []
        if pool.num_condensed:
            labels.append(pool.cond_labels)
            logits.append(pool.cond_logits)
        if pool.size:
            labels.append(pool.labels[: pool.size])
            logits.append(pool.logits[: pool.size])
        return torch.cat(labels).long().cpu(), torch.cat(logits).float().cpu()

    def _sync(self, logits: torch.Tensor) -> None:
        """Grow the per-index state with the pool and reset indices whose content was replaced."""
        n, old = logits.shape[0], self.priority.shape[0]
        if self.fingerprint.ndim != 2:
            self.fingerprint = torch.empty(0, logits.shape[1])
        if old < n:  # the pool grew: new indices start unvisited (NaN never equals a logit)
            self.priority = torch.cat([self.priority, torch.zeros(n - old)])
            self.visited = torch.cat([self.visited, torch.zeros(n - old, dtype=torch.bool)])
            self.fingerprint = torch.cat([self.fingerprint, torch.full((n - old, logits.shape[1]), float("nan"))])
        # A slot the pool overwrote (reservoir / oldest-out) holds a new sample: forget its old loss.
        replaced = (self.fingerprint[:n] != logits).any(dim=1)
        self.visited[:n] &= ~replaced
        self.fingerprint[:n] = logits

    def class_weights(self, labels: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        num_classes = logits.shape[1]
        n = labels.shape[0]
        difficulty = class_difficulty(labels, self.priority[:n], self.visited[:n], num_classes)
        diversity = class_diversity(labels, logits, num_classes)
        present = torch.bincount(labels, minlength=num_classes) > 0
        return modulating_weights(difficulty, diversity, present, self.difficulty_power, self.diversity_power,
                                  self.uniform_mix)

    def sample_probabilities(self, labels: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """P(i) = w_c(i) * p_i^alpha / sum_{j in c(i)} p_j^alpha over the pool indices (sums to 1)."""
        n = labels.shape[0]
        visited = self.visited[:n]
        top = float(self.priority[:n][visited].max()) if visited.any() else 1.0
        priority = torch.where(visited, self.priority[:n], torch.full((n,), top)) + PRIORITY_EPS
        scaled = priority ** self.priority_power
        per_class = torch.bincount(labels, weights=scaled, minlength=logits.shape[1])
        self.last_weights = self.class_weights(labels, logits)
        return self.last_weights[labels] * scaled / per_class[labels]

    # -- Sampler interface ----------------------------------------------------------------------------
    def sample(self, pool: SamplePool, batch_size: int) -> torch.Tensor:
        labels, logits = self._pool_view(pool)
        self._sync(logits)
        probabilities = self.sample_probabilities(labels, logits)
        return torch.multinomial(probabilities, batch_size, replacement=True)

    def feedback(self, indices: torch.Tensor, losses: torch.Tensor) -> None:
        indices, losses = indices.cpu().long(), losses.detach().float().cpu()
        self.priority[indices] = losses
        self.visited[indices] = True

    def state_dict(self) -> dict[str, Any]:
        return {"priority": self.priority.clone(), "visited": self.visited.clone(),
                "fingerprint": self.fingerprint.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.priority = state["priority"].clone()
        self.visited = state["visited"].clone()
        self.fingerprint = state["fingerprint"].clone()
