"""``cmi``: contrastive model inversion (Fang et al. 2021, "Contrastive Model Inversion for Data-Free
Knowledge Distillation"), as a base method of the shared interface.

The generator is trained on the shared MI objective (BN statistics + one-hot + adversarial, plus L_FA when
guided: ``cmi`` in mode ``mi*`` is the paper's CMI*) and an InfoNCE term that pushes every new image away
from the others and from earlier batches, against mode collapse:

* two differentiable views of each synthetic image: a *global* one (translation by up to 1/7 of the size,
  random horizontal flip) and a *local* random-resized crop (1/4 to all of the area, aspect 3/4..4/3, flip);
* each view is embedded by the teacher's per-BN-layer instance means (the spatial mean of every BN
  layer's input, standardised by that layer's running statistics, concatenated) followed by a small MLP
  head trained together with the generator;
* InfoNCE: the local view of image i must pick the global view of image i among the global views of the
  batch and ``cmi_negatives`` embeddings drawn (without replacement, anew every generator step) from a
  FIFO memory bank of the ``cmi_bank_size`` most recent embeddings of earlier batches
  (``cmi_temperature``), weighted by ``cmi_weight``. Both defaults are CMI's (``bank_size`` 40960,
  ``n_neg`` 4096).

Cost per generator step (issue 10.4): the head and the B x (B + M) similarity matrix scale with the M
negatives, so running them over the whole bank made the bank size a per-step cost. Measured 2026-12-01
13:49 UTC, one thread, load average 7 (a benchmark on both cores), FMNIST teacher, default config, bank
full at 40960, ``/tmp/micro_cmi_step.py`` (3 x ``synthesize()``, g_steps 2): 3206 ms per generator step
with all 40960 embeddings as negatives, 1720 ms with 4096 drawn, 1721 ms with 1024, 1642 ms with 256.
The head alone (``/tmp/micro_cmi.py``, 13:48 UTC): 42 ms over 4096 drawn negatives, 398 ms over 40960,
beside 216 ms for the teacher's forward + backward of the batch of 256. Fewer negatives than CMI's buy
little, so its 4096 stay; the bank keeps 10x more history than the old 4096 at the old per-step cost.

Fang et al. re-initialise the generator for every batch and optimise it with the latent codes for
hundreds of steps; ``cmi_reset_generator=true`` does that (with the latents optimised at ``lr_latent``).
The default keeps one persistent generator (as ``generative-deepinversion`` does), because a CPU budget allows only a
few generator steps per batch. The memory bank stores the raw embeddings (before the head), so the current
head maps old and new samples alike."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from server.inversion.base import InversionContext, InversionMethod, SyntheticBatch, inversion_methods
from server.inversion.generator import Generator
from shared.errors import ConfigError

GLOBAL_SHIFT = 1 / 7  # largest translation of the global view (4 pixels of 28, as a padded random crop)
LOCAL_SCALE = (0.25, 1.0)  # area fraction of the local random-resized crop (Fang et al.)
ASPECT = (3 / 4, 4 / 3)


def _affine(images: torch.Tensor, width: torch.Tensor, height: torch.Tensor, offset: torch.Tensor,
            flip: torch.Tensor) -> torch.Tensor:
    """Resample each image from the window of relative ``width`` x ``height`` centred at ``offset`` (N x 2,
    grid units: the image spans [-1, 1]), mirrored where ``flip``; bilinear, hence differentiable."""
    theta = torch.zeros(images.shape[0], 2, 3, device=images.device, dtype=images.dtype)
    theta[:, 0, 0] = width * torch.where(flip, -1.0, 1.0)
    theta[:, 1, 1] = height
    theta[:, :, 2] = offset
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def global_view(images: torch.Tensor) -> torch.Tensor:
    """Random translation (a padded random crop; border pixels fill the gap) and horizontal flip."""
    n, dev = images.shape[0], images.device
    ones = torch.ones(n, device=dev)
    offset = (torch.rand(n, 2, device=dev) * 2 - 1) * 2 * GLOBAL_SHIFT
    return _affine(images, ones, ones, offset, torch.rand(n, device=dev) < 0.5)


def local_view(images: torch.Tensor) -> torch.Tensor:
    """Random-resized crop (area ``LOCAL_SCALE``, aspect ``ASPECT``, anywhere inside) with horizontal flip."""
    n, dev = images.shape[0], images.device
    scale = torch.empty(n, device=dev).uniform_(*LOCAL_SCALE)
    aspect = torch.exp(torch.empty(n, device=dev).uniform_(math.log(ASPECT[0]), math.log(ASPECT[1])))
    width = torch.sqrt(scale * aspect).clamp(max=1.0)
    height = torch.sqrt(scale / aspect).clamp(max=1.0)
    room = torch.stack([1 - width, 1 - height], dim=1)  # how far the window's centre may move
    offset = (torch.rand(n, 2, device=dev) * 2 - 1) * room
    return _affine(images, width, height, offset, torch.rand(n, device=dev) < 0.5)


class InstanceMeans:
    """While ``active()``, records each teacher BN layer's per-sample, per-channel input mean (standardised)."""

    def __init__(self, layers: list[nn.BatchNorm2d]) -> None:
        self.layers = layers
        self.dim = sum(layer.num_features for layer in layers)
        self._enabled = False
        self._means: list[torch.Tensor] = []
        self._handles = [layer.register_forward_hook(self._hook) for layer in layers]

    def _hook(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], _output: torch.Tensor) -> None:
        if not self._enabled:
            return
        assert isinstance(module, nn.BatchNorm2d) and module.running_mean is not None
        assert module.running_var is not None
        mean = inputs[0].mean(dim=(2, 3))
        # Layers differ in scale by orders of magnitude; the running statistics put them on one footing.
        self._means.append((mean - module.running_mean) / torch.sqrt(module.running_var + module.eps))

    @contextmanager
    def active(self) -> Iterator[list[torch.Tensor]]:
        self._means = []
        self._enabled = True
        try:
            yield self._means
        finally:
            self._enabled = False

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


class MemoryBank:
    """A FIFO ring buffer of the last ``capacity`` embeddings (detached): the InfoNCE negatives."""

    def __init__(self, capacity: int, dim: int, device: torch.device) -> None:
        self.capacity = capacity
        self.data = torch.zeros(capacity, dim, device=device)
        self.size = 0
        self.next = 0

    def __len__(self) -> int:
        return self.size

    def push(self, embeddings: torch.Tensor) -> None:
        embeddings = embeddings.detach()[-self.capacity:]  # more than fits: keep the newest
        slots = (self.next + torch.arange(embeddings.shape[0])) % self.capacity
        self.data[slots.to(self.data.device)] = embeddings.to(self.data.dtype)
        self.next = int((self.next + embeddings.shape[0]) % self.capacity)
        self.size = min(self.capacity, self.size + embeddings.shape[0])

    def negatives(self, count: int | None = None) -> torch.Tensor:
        """All stored embeddings, or ``count`` of them drawn without replacement when the bank holds more
        (CMI's ``n_neg``: the head's per-step cost follows ``count``, not the bank size)."""
        if count is None or self.size <= count:
            return self.data[: self.size]
        chosen = torch.randperm(self.size)[:count]
        return self.data[chosen.to(self.data.device)]

    def state_dict(self) -> dict[str, Any]:
        return {"data": self.data[: self.size].clone(), "size": self.size, "next": self.next}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.size, self.next = int(state["size"]), int(state["next"])
        self.data.zero_()
        self.data[: self.size] = state["data"].to(self.data.device)


def projection_head(dim_in: int, dim_out: int) -> nn.Module:
    return nn.Sequential(nn.Linear(dim_in, dim_in), nn.ReLU(inplace=True), nn.Linear(dim_in, dim_out))


def contrastive_logits(anchor: torch.Tensor, positive: torch.Tensor, negatives: torch.Tensor,
                       temperature: float) -> torch.Tensor:
    """Cosine similarities / T of each anchor with [all positives of the batch, bank negatives].

    Row i's target is column i; the other B - 1 + M columns are its negatives (B batch, M bank)."""
    keys = torch.cat([F.normalize(positive, dim=1), F.normalize(negatives, dim=1)])
    return F.normalize(anchor, dim=1) @ keys.T / temperature


def info_nce(anchor: torch.Tensor, positive: torch.Tensor, negatives: torch.Tensor, temperature: float
             ) -> torch.Tensor:
    logits = contrastive_logits(anchor, positive, negatives, temperature)
    return F.cross_entropy(logits, torch.arange(anchor.shape[0], device=anchor.device))


@inversion_methods.register("cmi")
class ContrastiveModelInversion(InversionMethod):
    name = "cmi"

    def __init__(self, ctx: InversionContext) -> None:
        super().__init__(ctx)
        if not self.bn_stats.layers:
            raise ConfigError("distill.base=cmi embeds images by the teacher's BatchNorm inputs, but the teacher "
                              "has none (or is TorchScript); use base=fast or generative-deepinversion, "
                              "or a BN teacher")
        cfg = ctx.cfg
        self.embed = InstanceMeans(self.bn_stats.layers)
        self.head = projection_head(self.embed.dim, cfg.cmi_head_dim).to(ctx.device)
        self.bank = MemoryBank(cfg.cmi_bank_size, self.embed.dim, ctx.device)
        self.optimizer = self._optimizer(ctx.generator)  # persistent (unused when re-initialising per batch)
        self._last_global: torch.Tensor | None = None  # raw embeddings of the last step's global views

    def _optimizer(self, generator: Generator, latent: torch.Tensor | None = None) -> torch.optim.Optimizer:
        cfg = self.ctx.cfg
        groups: list[dict[str, Any]] = [{"params": list(generator.parameters())},
                                        {"params": list(self.head.parameters())}]
        if latent is not None:
            groups.append({"params": [latent], "lr": cfg.lr_latent})
        return torch.optim.Adam(groups, lr=cfg.lr_generator, betas=(0.5, 0.999))

    def embeddings(self, images: torch.Tensor) -> torch.Tensor:
        """Raw (pre-head) embeddings of ``images``: concatenated standardised BN instance means."""
        with self.embed.active() as means:
            self.ctx.teacher(images)
        return torch.cat(means, dim=1)

    def extra_losses(self, images: torch.Tensor, view: torch.Tensor, teacher_logits: torch.Tensor
                     ) -> dict[str, torch.Tensor]:
        """InfoNCE between a local view (the anchor, differentiable) and the global view of each image (the
        key: the view the teacher judged when ``synthesis_augment`` is on, else ``global_view``). As in
        Fang et al., the keys are detached: the generator is pushed by its anchors only, so it cannot lower
        the loss by moving the keys."""
        del teacher_logits
        cfg = self.ctx.cfg
        if cfg.cmi_weight == 0:
            return {}
        n = images.shape[0]
        key_view = view if cfg.synthesis_augment != "none" else global_view(images)
        # One teacher pass for both views (eval-mode BN: the batch composition does not matter).
        raw = self.embeddings(torch.cat([key_view, local_view(images)]))
        raw_global, raw_local = raw[:n], raw[n:]
        self._last_global = raw_global.detach()
        with torch.no_grad():
            keys, negatives = self.head(raw_global), self.head(self.bank.negatives(cfg.cmi_negatives))
        loss = info_nce(self.head(raw_local), keys, negatives, cfg.cmi_temperature)
        return {"cr": cfg.cmi_weight * loss}

    def synthesize(self) -> SyntheticBatch:
        ctx, cfg = self.ctx, self.ctx.cfg
        ctx.generator.train()
        if cfg.cmi_reset_generator:
            _reinitialise(ctx.generator)
            z = ctx.generator.sample_latent(cfg.synthesis_batch_size, ctx.device).requires_grad_(True)
            optimizer = self._optimizer(ctx.generator, z)
        else:
            z = ctx.generator.sample_latent(cfg.synthesis_batch_size, ctx.device)
            optimizer = self.optimizer
        targets = self.sample_targets()
        logs: dict[str, float] = {}
        for _ in range(cfg.g_steps):
            images, _, logs = self.generator_step(ctx.generator, z, targets, optimizer)
        if self._last_global is not None:  # the embeddings of exactly the returned images
            self.bank.push(self._last_global)
            self._last_global = None
        logs["bank"] = float(len(self.bank))
        return self.batch(images, targets, logs)

    def close(self) -> None:
        super().close()
        self.embed.remove()

    def state_dict(self) -> dict[str, Any]:
        return super().state_dict() | {"optimizer": self.optimizer.state_dict(), "head": self.head.state_dict(),
                                       "bank": self.bank.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.optimizer.load_state_dict(state["optimizer"])
        self.head.load_state_dict(state["head"])
        self.bank.load_state_dict(state["bank"])


def _reinitialise(module: nn.Module) -> None:
    """Fresh weights (and BN running statistics) for every sub-module that defines ``reset_parameters``."""
    for child in module.modules():
        reset = getattr(child, "reset_parameters", None)
        if callable(reset) and child is not module:
            reset()
