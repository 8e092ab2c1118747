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
   alpha = ``ssd_priority_power``; a sample not yet trained on (new, or a slot the pool overwrote) counts
   with the largest priority seen so far (the running maximum of every KD loss fed back, 1.0 before the
   first, as in prioritised experience replay), so every new sample is visited soon. Overall
   P(i) = w_c(i) P(i | c(i)), drawn with replacement: first a class per draw from w, then an index within
   the class by its sum tree.

Cost per KD step (issue 10.4): no pass over the pool. The pool reports which indices it wrote
(``Sampler.written``, once per synthesised batch); the class difficulty sums and visit counts are updated
in ``feedback`` and on overwrite; the class diversity is recomputed only after a write; each class has a
sum tree over the pool indices, updated and descended in batches (``ClassSumTrees``). Measured with
``/tmp/micro2.py`` (fill a ``SamplePool(n, sampler="ssd")`` in batches of 1000, 20 x ``sample(256)`` +
``feedback``, ``torch.set_num_threads(1)``, 2026-12-01 13:47 UTC, load average 5.5 from a benchmark on
both cores, two alternating runs each): the full-pool version (commit fa679b6) took 6.5 / 6.6 ms per KD
step at pool 5,000 and 32 / 46 ms at 50,000; this one 4.2 / 6.6 ms and 5.9 / 7.1 ms (the uniform sampler
about 1 ms). What remains is per-operation dispatch over log2(pool) tree levels, not pool-sized work.

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
INITIAL_MAX_PRIORITY = 1.0  # the "largest priority seen" before any feedback (prioritised replay's 1.0)


def difficulty_from_sums(sums: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Per-class mean KD loss from running sums and visit counts; classes never visited take the hardest's."""
    known = counts > 0
    if not known.any():
        return torch.ones(sums.shape[0])
    difficulty = torch.where(known, sums / counts.clamp(min=1), torch.zeros_like(sums)).float()
    return torch.where(known, difficulty, difficulty[known].max())


def class_difficulty(labels: torch.Tensor, priority: torch.Tensor, visited: torch.Tensor,
                     num_classes: int) -> torch.Tensor:
    """Mean last KD loss per class over visited samples; classes without any take the hardest class's."""
    counts = torch.bincount(labels[visited], minlength=num_classes).float()
    sums = torch.bincount(labels[visited], weights=priority[visited].double(), minlength=num_classes)
    return difficulty_from_sums(sums, counts)


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


class ClassSumTrees:
    """One sum tree per class over all pool indices (row c holds p_i^alpha at leaf i if c(i) = c, else 0).

    Updates and draws are batched: a level of the tree is one gather/scatter for the whole batch, so a
    KD step costs O(batch * log pool) tensor work instead of O(pool). Parents are recomputed from their
    children (not adjusted by deltas), so no rounding error accumulates over a long run. float64 keeps a
    class total exact enough that a draw never lands on a zero leaf. Memory: classes x 2 x next_pow2(pool)."""

    def __init__(self, num_classes: int, capacity: int) -> None:
        self.leaves = 1 << max(capacity - 1, 1).bit_length()
        self.depth = self.leaves.bit_length() - 1
        self.width = 2 * self.leaves
        self.tree = torch.zeros(num_classes, 2 * self.leaves, dtype=torch.float64)

    def set(self, rows: torch.Tensor, indices: torch.Tensor, values: torch.Tensor) -> None:
        """Leaf ``indices`` of ``rows`` := ``values`` ((row, index) pairs must be distinct)."""
        flat, base, pos = self.tree.view(-1), rows * self.width, indices + self.leaves
        flat[base + pos] = values.double()
        for _ in range(self.depth):  # flat 1-d gathers (take): fewer dispatch steps than tree[rows, pos]
            pos = pos // 2  # a repeated parent gets the same sum twice: harmless
            flat[base + pos] = flat.take(base + 2 * pos) + flat.take(base + 2 * pos + 1)

    def leaf(self, rows: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        return self.tree[rows, indices + self.leaves]

    def totals(self) -> torch.Tensor:
        return self.tree[:, 1]

    def find(self, rows: torch.Tensor, mass: torch.Tensor) -> torch.Tensor:
        """Per draw, the leaf of ``rows`` where the cumulative sum passes ``mass`` (0 <= mass < total)."""
        flat, base = self.tree.view(-1), rows * self.width
        pos = torch.ones_like(rows)
        mass = mass.double()
        for _ in range(self.depth):
            left = flat.take(base + 2 * pos)
            # never step into an empty right subtree (mass can reach the total through rounding)
            right = (mass >= left) & (flat.take(base + 2 * pos + 1) > 0)
            mass = mass - left * right
            pos = 2 * pos + right.long()
        return pos - self.leaves


@samplers.register("ssd")
class SSDSampler(Sampler):
    """Priority sampler over a ``SamplePool`` with SSD-KD-style class modulation (see the module docstring).

    ``cfg`` supplies the ``ssd_*`` knobs; without it the ``DistillConfig`` defaults apply. The per-index
    state (last KD loss, visited, label) is built on first contact with the pool and then kept in step by
    ``written`` (the pool's hook) and ``feedback``: no per-step pass over the pool."""

    def __init__(self, cfg: DistillConfig | None = None) -> None:
        cfg = cfg or DistillConfig()
        self.difficulty_power = cfg.ssd_difficulty_power
        self.diversity_power = cfg.ssd_diversity_power
        self.priority_power = cfg.ssd_priority_power
        self.uniform_mix = cfg.ssd_uniform_mix
        self.max_priority = INITIAL_MAX_PRIORITY  # running maximum of every KD loss fed back
        self.size = 0  # pool indices known to the sampler (0 .. size - 1)
        self.trees: ClassSumTrees | None = None  # built on first contact with the pool
        self.pending: dict[str, Any] | None = None  # a loaded state, applied on first contact
        self.last_weights = torch.empty(0)  # class weights of the last draw (for inspection)
        self.diversity: torch.Tensor | None = None  # per class; None = the pool changed since last computed

    # -- per-index state --------------------------------------------------------------------------------
    @property
    def priority(self) -> torch.Tensor:
        """Last KD loss per pool index (unvisited: the value last fed back there, or 0)."""
        return self._priority[: self.size] if self.trees is not None else self._pending("priority")

    @property
    def visited(self) -> torch.Tensor:
        return self._visited[: self.size] if self.trees is not None else self._pending("visited").bool()

    def _pending(self, key: str) -> torch.Tensor:
        return self.pending[key] if self.pending is not None else torch.empty(0)

    def _ensure(self, pool: SamplePool) -> None:
        """On first contact: allocate for the pool's capacity and register every index it holds, with a
        loaded state's losses, visits and labels where there is one."""
        if self.trees is not None:
            return
        capacity, num_classes = pool.num_condensed + pool.cap, pool._classes()
        self.trees = ClassSumTrees(num_classes, capacity)
        self._priority = torch.zeros(capacity)
        self._visited = torch.zeros(capacity, dtype=torch.bool)
        self._labels = torch.zeros(capacity, dtype=torch.long)
        self.size = len(pool)
        self._labels[: self.size] = _pool_labels(pool)
        state, self.pending = self.pending, None
        exact = self._restore(state) if state is not None else False
        labels, visited = self._labels[: self.size], self._visited[: self.size]
        self.class_count = torch.bincount(labels, minlength=num_classes)  # pool entries per class
        self.visit_count = torch.bincount(labels[visited], minlength=num_classes)  # visited entries per class
        # sum of the last losses of visited entries per class; the saved sums make a resume bitwise the same
        self.loss_sum = torch.zeros(num_classes, dtype=torch.float64)
        if exact:
            self.loss_sum = state["loss_sum"].double().clone()
        else:
            self.loss_sum.index_add_(0, labels[visited], self._priority[: self.size][visited].double())
        everything = torch.arange(self.size)
        self.trees.set(labels, everything, self._leaf_values(everything))

    def _restore(self, state: dict[str, Any]) -> bool:
        """Copy a loaded state's per-index values; True if it carries the labels its sums were kept with
        (older states do not: the pool's labels and recomputed sums stand in)."""
        m = min(self.size, len(state["priority"]))  # the pool may have grown since (a write brought us here)
        self.max_priority = float(state.get("max_priority", _legacy_max(state)))
        self._priority[:m] = state["priority"][:m].float()
        self._visited[:m] = state["visited"][:m].bool()
        exact = "labels" in state and "loss_sum" in state
        if exact:  # as the saved sums knew them: a write may just have changed some in the pool
            self._labels[:m] = state["labels"][:m].long()
        return exact

    def _leaf_values(self, indices: torch.Tensor) -> torch.Tensor:
        """(priority + eps)^alpha; an unvisited index counts with the running maximum priority."""
        priority = torch.where(self._visited[indices], self._priority[indices], torch.tensor(self.max_priority))
        return (priority.double() + PRIORITY_EPS) ** self.priority_power

    def _forget(self, indices: torch.Tensor) -> None:
        """Take these (distinct, known) indices out of the class statistics and their class's tree."""
        labels, visited = self._labels[indices], self._visited[indices]
        self.class_count -= torch.bincount(labels, minlength=self.class_count.shape[0])
        self.loss_sum.index_add_(0, labels[visited], -self._priority[indices][visited].double())
        self.visit_count -= torch.bincount(labels[visited], minlength=self.class_count.shape[0])
        assert self.trees is not None
        self.trees.set(labels, indices, torch.zeros(len(indices), dtype=torch.float64))

    def written(self, pool: SamplePool, indices: torch.Tensor) -> None:
        """New content at these indices: it is unvisited and gets the largest priority seen so far."""
        # First contact registers everything the pool holds (a loaded state's losses included); the written
        # indices are then reset below like any overwrite.
        self._ensure(pool)
        indices = indices.cpu().long().unique()
        self._forget(indices[indices < self.size])
        self.size = max(self.size, int(indices.max()) + 1)
        labels = _pool_labels(pool, indices)
        self._labels[indices], self._visited[indices], self._priority[indices] = labels, False, 0.0
        self.class_count += torch.bincount(labels, minlength=self.class_count.shape[0])
        assert self.trees is not None
        self.trees.set(labels, indices, self._leaf_values(indices))
        self.diversity = None

    def feedback(self, indices: torch.Tensor, losses: torch.Tensor) -> None:
        """Store each index's last KD loss (for an index drawn twice, its last one) and update the sums."""
        if self.trees is None:  # feedback before any draw from this sampler: nothing to update
            return
        indices, losses = _last_per_index(indices.cpu().long(), losses.detach().float().cpu())
        labels, was_visited = self._labels[indices], self._visited[indices]
        self.loss_sum.index_add_(0, labels[was_visited], -self._priority[indices][was_visited].double())
        self.visit_count += torch.bincount(labels[~was_visited], minlength=self.class_count.shape[0])
        self.loss_sum.index_add_(0, labels, losses.double())
        self._priority[indices], self._visited[indices] = losses, True
        self.trees.set(labels, indices, self._leaf_values(indices))
        if float(losses.max()) > self.max_priority:
            self._raise_max(float(losses.max()))

    def _raise_max(self, value: float) -> None:
        """Unvisited indices count with the running maximum: refresh their leaves when it rises (rare once
        training has started; the scan over ``visited`` is a cheap boolean pass)."""
        self.max_priority = value
        unvisited = (~self._visited[: self.size]).nonzero().squeeze(1)
        if len(unvisited):
            assert self.trees is not None
            self.trees.set(self._labels[unvisited], unvisited, self._leaf_values(unvisited))

    # -- class weights and draws ------------------------------------------------------------------------
    def class_weights(self, pool: SamplePool) -> torch.Tensor:
        """w_c from the running difficulty sums and the diversity cached since the pool last changed."""
        self._ensure(pool)
        if self.diversity is None:
            self.diversity = class_diversity(self._labels[: self.size], _pool_logits(pool), len(self.class_count))
        difficulty = difficulty_from_sums(self.loss_sum, self.visit_count.double())
        return modulating_weights(difficulty, self.diversity, self.class_count > 0, self.difficulty_power,
                                  self.diversity_power, self.uniform_mix)

    def sample_probabilities(self, pool: SamplePool) -> torch.Tensor:
        """The exact P(i) = w_c(i) p_i^alpha / sum_{j in c(i)} p_j^alpha over all pool indices (O(pool): for
        tests and inspection; ``sample`` draws from the same distribution without forming it)."""
        weights = self.class_weights(pool)
        assert self.trees is not None
        labels = self._labels[: self.size]
        leaves = self.trees.leaf(labels, torch.arange(self.size))
        return (weights[labels].double() * leaves / self.trees.totals()[labels]).float()

    def sample(self, pool: SamplePool, batch_size: int) -> torch.Tensor:
        """Classes from w, then within each drawn class an index by its tree (with replacement)."""
        self.last_weights = self.class_weights(pool)
        assert self.trees is not None
        classes = torch.multinomial(self.last_weights, batch_size, replacement=True)
        mass = torch.rand(batch_size, dtype=torch.float64) * self.trees.totals()[classes]
        return self.trees.find(classes, mass)

    def state_dict(self) -> dict[str, Any]:
        if self.trees is None:
            return dict(self.pending) if self.pending is not None else {}
        return {"priority": self.priority.clone(), "visited": self.visited.clone(),
                "labels": self._labels[: self.size].clone(), "max_priority": self.max_priority,
                "loss_sum": self.loss_sum.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Keep the state until the pool is seen (its labels rebuild the trees and sums); states written
        before the incremental sampler (with a ``fingerprint``) load too."""
        self.trees, self.size, self.diversity = None, 0, None
        self.pending = {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in state.items()} or None


def _pool_labels(pool: SamplePool, indices: torch.Tensor | None = None) -> torch.Tensor:
    """Labels of pool indices (condensed first, then synthetic slots) on CPU; all of them by default."""
    if indices is None:
        return torch.cat([pool.cond_labels.long().cpu(), pool.labels[: pool.size].long().cpu()])
    cond = indices < pool.num_condensed
    labels = torch.empty(len(indices), dtype=torch.long)
    labels[cond] = pool.cond_labels[indices[cond].to(pool.cond_labels.device)].long().cpu()
    slots = indices[~cond] - pool.num_condensed
    labels[~cond] = pool.labels[slots.to(pool.labels.device)].long().cpu()
    return labels


def _pool_logits(pool: SamplePool) -> torch.Tensor:
    parts = [pool.cond_logits.float().cpu()] if pool.num_condensed else []
    return torch.cat(parts + ([pool.logits[: pool.size].float().cpu()] if pool.size else []))


def _last_per_index(indices: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Distinct indices, each with the value of its last occurrence (a batch drawn with replacement)."""
    unique, inverse = indices.unique(return_inverse=True)
    last = torch.full((len(unique),), -1, dtype=torch.long)
    last.scatter_reduce_(0, inverse, torch.arange(len(indices)), reduce="amax")
    return unique, values[last]


def _legacy_max(state: dict[str, Any]) -> float:
    """For a state saved without ``max_priority``: the largest loss it had recorded."""
    visited = state["visited"].bool()
    return float(state["priority"][visited].max()) if visited.any() else INITIAL_MAX_PRIORITY
