"""The in-memory KD sample pool of Algorithm 1 and its pluggable batch samplers.

The pool starts with the condensed samples (kept for the whole run) and grows by one synthetic batch per
epoch up to ``cap`` synthetic samples; beyond the cap a ``reservoir`` policy keeps a uniform sample of
everything seen so far and ``oldest`` drops the oldest first. Each entry stores the normalised image,
its label (teacher pseudo-label or condensed label) and the teacher's logits, so KD without
augmentation needs no teacher forward at all.

Two registries make the follow-up issue a matter of new files or functions:
* ``samplers`` (``distill.sampler``): how a KD batch is drawn (``uniform`` here; SSD-KD priority later),
  with a ``feedback`` hook that receives per-sample KD losses;
* ``replays`` (``distill.replay``): factories ``(cfg, condensed) -> Replay`` for what stores and replays
  samples (``pool`` here; a generative VAE replay later), following the ``Replay`` protocol below.
  ``condensed`` is (images, labels, teacher logits) or None."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from shared.config.distill import DistillConfig
from shared.errors import ConfigError
from shared.registry import Registry


@dataclass
class PoolBatch:
    images: torch.Tensor
    labels: torch.Tensor
    teacher_logits: torch.Tensor
    indices: torch.Tensor  # positions in the pool (condensed first, then synthetic slots)


class Sampler(ABC):
    """Chooses which pool entries form a KD batch."""

    def __init__(self, cfg: DistillConfig | None = None) -> None:
        del cfg  # samplers with options (e.g. ``ssd``) read them from the distill config

    @abstractmethod
    def sample(self, pool: SamplePool, batch_size: int) -> torch.Tensor:
        """Indices into ``pool`` (0 .. len(pool) - 1)."""

    def sample_synthetic(self, pool: SamplePool, batch_size: int) -> torch.Tensor:
        """Indices of synthetic entries only (``distill.condensed_share`` draws the condensed part itself);
        uniform unless a sampler overrides it."""
        return pool.num_condensed + torch.randint(pool.size, (batch_size,))

    def feedback(self, indices: torch.Tensor, losses: torch.Tensor) -> None:
        """Per-sample KD losses of the batch just trained on (for difficulty-aware samplers)."""
        del indices, losses

    def written(self, pool: SamplePool, indices: torch.Tensor) -> None:
        """``pool`` just stored new samples at these pool indices (new or overwritten slots), so stateful
        samplers update only what changed instead of rescanning the pool every KD step."""
        del pool, indices

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        del state


samplers: Registry[type[Sampler]] = Registry("pool sampler")


@samplers.register("uniform")
class UniformSampler(Sampler):
    """Every entry equally likely, with replacement (Algorithm 1's "randomly draw a batch")."""

    def sample(self, pool: SamplePool, batch_size: int) -> torch.Tensor:
        return torch.randint(len(pool), (batch_size,))


class Replay(Protocol):
    """What the distillation loop needs from a sample store."""

    seen: int  # synthetic samples ever added (``distill.synthetic_budget`` counts these)

    def add(self, images: torch.Tensor, labels: torch.Tensor, teacher_logits: torch.Tensor) -> None: ...
    def sample(self, batch_size: int) -> PoolBatch: ...
    def feedback(self, indices: torch.Tensor, losses: torch.Tensor) -> None: ...
    def __len__(self) -> int: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


# (cfg, condensed (images, labels, teacher logits) or None, teacher) -> Replay; the teacher labels replays.
ReplayFactory = Callable[[DistillConfig, "tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None", nn.Module], Replay]
replays: Registry[ReplayFactory] = Registry("replay")


class SamplePool:
    """Condensed samples (fixed) + a capped store of synthetic samples, all in memory."""

    def __init__(self, cap: int, policy: str = "reservoir", sampler: str = "uniform",
                 condensed: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
                 cfg: DistillConfig | None = None, condensed_share: float = 0.0) -> None:
        if cap < 1:
            raise ConfigError(f"distill.pool_cap={cap} must be >= 1")
        if policy not in ("reservoir", "oldest"):
            raise ConfigError(f"distill.pool_policy={policy!r} must be reservoir or oldest")
        self.cap = cap
        self.policy = policy
        self.condensed_share = condensed_share
        self.sampler = samplers.get(sampler)(cfg)
        empty = (torch.empty(0), torch.empty(0, dtype=torch.long), torch.empty(0))
        self.cond_images, self.cond_labels, self.cond_logits = condensed or empty
        self.images: torch.Tensor | None = None  # cap x C x H x W, allocated on the first add
        self.labels = torch.empty(0, dtype=torch.long)
        self.logits = torch.empty(0)
        self.size = 0  # filled synthetic slots
        self.seen = 0  # synthetic samples ever offered (reservoir sampling needs it)
        self.next_slot = 0  # oldest-out ring position

    @property
    def num_condensed(self) -> int:
        return int(self.cond_labels.shape[0])

    def __len__(self) -> int:
        return self.num_condensed + self.size

    def _allocate(self, images: torch.Tensor, logits: torch.Tensor) -> None:
        self.images = torch.empty((self.cap, *images.shape[1:]), dtype=images.dtype, device=images.device)
        self.labels = torch.empty(self.cap, dtype=torch.long, device=images.device)
        self.logits = torch.empty((self.cap, logits.shape[1]), dtype=logits.dtype, device=images.device)

    def add(self, images: torch.Tensor, labels: torch.Tensor, teacher_logits: torch.Tensor) -> None:
        """Insert a synthetic batch, evicting by ``policy`` once ``cap`` is reached."""
        if self.images is None:
            self._allocate(images, teacher_logits)
        assert self.images is not None
        slots = torch.tensor([self._slot() for _ in range(images.shape[0])], dtype=torch.long)
        keep = slots >= 0
        if keep.any():
            target = slots[keep].to(self.images.device)
            self.images[target] = images[keep.to(images.device)]
            self.labels[target] = labels[keep.to(labels.device)]
            self.logits[target] = teacher_logits[keep.to(teacher_logits.device)]
            self.sampler.written(self, self.num_condensed + slots[keep])

    def _slot(self) -> int:
        """Where the next offered sample goes (-1: discarded, reservoir only)."""
        self.seen += 1
        if self.size < self.cap:
            self.size += 1
            self.next_slot = self.size % self.cap
            return self.size - 1
        if self.policy == "oldest":
            slot = self.next_slot
            self.next_slot = (slot + 1) % self.cap
            return slot
        j = int(torch.randint(self.seen, (1,)))
        return j if j < self.cap else -1

    def get(self, indices: torch.Tensor) -> PoolBatch:
        cond = indices < self.num_condensed
        images = torch.empty((len(indices), *self._shape()), dtype=torch.float32, device=self._device())
        labels = torch.empty(len(indices), dtype=torch.long, device=self._device())
        logits = torch.empty((len(indices), self._classes()), dtype=torch.float32, device=self._device())
        if cond.any():
            idx = indices[cond]
            images[cond], labels[cond] = self.cond_images[idx], self.cond_labels[idx]
            logits[cond] = self.cond_logits[idx]
        if (~cond).any():
            assert self.images is not None
            idx = indices[~cond] - self.num_condensed
            images[~cond], labels[~cond], logits[~cond] = self.images[idx], self.labels[idx], self.logits[idx]
        return PoolBatch(images, labels, logits, indices)

    def sample(self, batch_size: int) -> PoolBatch:
        if len(self) == 0:
            raise ConfigError("the KD pool is empty: mode mi needs at least one synthesised batch, "
                              "modes cs-only/mi+cs/mi* need condensed samples")
        n_cond = round(self.condensed_share * batch_size) if self.num_condensed and self.size else 0
        if not n_cond:
            return self.get(self.sampler.sample(self, batch_size))
        # A fixed share of condensed samples in every batch: without it they fall to |condensed| / |pool|
        # (0.5% once a 20k pool is full) and the prototypes stop shaping the student.
        cond = torch.randint(self.num_condensed, (n_cond,))
        return self.get(torch.cat([cond, self.sampler.sample_synthetic(self, batch_size - n_cond)]))

    def feedback(self, indices: torch.Tensor, losses: torch.Tensor) -> None:
        self.sampler.feedback(indices, losses)

    def synthetic(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The stored synthetic images and labels (for grids and inspection)."""
        if self.images is None:
            return torch.empty(0), torch.empty(0, dtype=torch.long)
        return self.images[: self.size], self.labels[: self.size]

    def _shape(self) -> tuple[int, ...]:
        source = self.images if self.images is not None else self.cond_images
        return tuple(source.shape[1:])

    def _device(self) -> torch.device:
        return (self.images if self.images is not None else self.cond_images).device

    def _classes(self) -> int:
        return int((self.logits if self.images is not None else self.cond_logits).shape[1])

    def state_dict(self) -> dict[str, Any]:
        return {
            "images": None if self.images is None else self.images[: self.size].clone(),
            "labels": self.labels[: self.size].clone(), "logits": self.logits[: self.size].clone(),
            "size": self.size, "seen": self.seen, "next_slot": self.next_slot,
            "sampler": self.sampler.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the synthetic part (the condensed part comes from the run's inputs)."""
        self.size, self.seen, self.next_slot = int(state["size"]), int(state["seen"]), int(state["next_slot"])
        if state["images"] is not None:
            self._allocate(state["images"], state["logits"])
            assert self.images is not None
            self.images[: self.size] = state["images"]
            self.labels[: self.size] = state["labels"]
            self.logits[: self.size] = state["logits"]
        self.sampler.load_state_dict(state["sampler"])


def check_views(cfg: DistillConfig) -> None:
    """Cached KD views live in the pool's entries; other replays would silently ignore them."""
    if cfg.kd_views > 1 and cfg.replay != "pool":
        raise ConfigError(f"distill.kd_views={cfg.kd_views} caches views in the KD pool but distill.replay="
                          f"{cfg.replay!r}; use distill.replay=pool or distill.kd_views=0")


@replays.register("pool")
def build_pool(cfg: DistillConfig, condensed: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None,
               teacher: nn.Module | None = None) -> SamplePool:
    """``replay = pool``: the growing in-memory pool of Algorithm 1 (``pool_cap`` images, each as
    ``kd_views`` entries when views are cached)."""
    del teacher  # the pool stores the teacher logits computed at synthesis time
    return SamplePool(cfg.pool_cap * max(1, cfg.kd_views), cfg.pool_policy, cfg.sampler, condensed=condensed, cfg=cfg,
                      condensed_share=cfg.condensed_share)
