"""``fast``: Fast-Datafree meta-synthesis (Fang et al. 2022, "Up to 100x Faster Data-free Knowledge
Distillation"), its ``fast_meta`` synthesizer.

A shared *meta* generator learns how to start. Each ``synthesize()`` clones it, draws fresh latent codes
and optimises the clone *and* the codes for ``g_steps`` steps on the MI objective (computed on a random
crop/flip of the images, with BN statistics averaged over earlier batches: ``bn_momentum``); the step with
the lowest loss gives the batch. The meta generator is then updated by first-order MAML: its gradient is
the sum of the clone's gradients over the inner steps, applied by Adam at ``lr_generator * g_steps``
(``fast_meta=reptile`` uses theta - theta_fast instead). ``fast_reset_l0`` re-initialises the
generator's first (projection) layer once, that many epochs after warm-up, as upstream does at 120."""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn

from server.inversion.base import InversionContext, InversionMethod, SyntheticBatch, inversion_methods
from server.run import backward


@inversion_methods.register("fast")
class FastMetaSynthesis(InversionMethod):
    name = "fast"

    def __init__(self, ctx: InversionContext) -> None:
        super().__init__(ctx)
        cfg = ctx.cfg
        self.meta_optimizer = torch.optim.Adam(ctx.generator.parameters(), lr=cfg.lr_generator * cfg.g_steps,
                                               betas=(0.5, 0.999))

    def synthesize(self) -> SyntheticBatch:
        ctx, cfg = self.ctx, self.ctx.cfg
        self._maybe_reset_l0()
        fast = copy.deepcopy(ctx.generator).train()
        z = ctx.generator.sample_latent(cfg.synthesis_batch_size, ctx.device).requires_grad_(True)
        noise = self.noisy_layers()
        # A fresh inner optimiser per batch: the clone and its latents start from the meta state every time.
        groups = [{"params": fast.parameters()}, {"params": [z], "lr": cfg.lr_latent}]
        groups += [{"params": noise.parameters()}] if noise is not None else []
        inner = torch.optim.Adam(groups, lr=cfg.lr_generator, betas=(0.5, 0.999))
        targets = self.sample_targets()
        self.meta_optimizer.zero_grad(set_to_none=True)
        best_images, best_loss, logs = None, math.inf, {}
        for _ in range(cfg.g_steps):
            images = fast(z, targets, noise)
            total, terms, _ = self.generator_loss(images, targets)
            loss = float(total.detach())
            if loss < best_loss:
                best_images, best_loss = images.detach(), loss
            inner.zero_grad(set_to_none=True)
            backward(total)
            if cfg.fast_meta == "fomaml":
                _accumulate_grads(ctx.generator, fast)
            inner.step()
            logs = {k: float(v.detach()) for k, v in terms.items()} | {"g_loss": loss}
            logs |= self.after_generator_step()
        if cfg.fast_meta == "reptile":
            with torch.no_grad():
                for slow, adapted in zip(ctx.generator.parameters(), fast.parameters(), strict=True):
                    slow.grad = slow.detach() - adapted.detach()
        self.meta_optimizer.step()
        assert best_images is not None
        return self.batch(best_images, targets, logs | {"best_loss": best_loss})

    def _maybe_reset_l0(self) -> None:
        cfg, gen = self.ctx.cfg, self.ctx.generator
        if cfg.fast_reset_l0 and self.ctx.epoch == cfg.warmup_epochs + cfg.fast_reset_l0:
            layer = gen.project[0]
            assert isinstance(layer, nn.Linear)
            nn.init.normal_(layer.weight, 0.0, 0.02)
            nn.init.zeros_(layer.bias)

    def state_dict(self) -> dict[str, Any]:
        return super().state_dict() | {"meta_optimizer": self.meta_optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.meta_optimizer.load_state_dict(state["meta_optimizer"])


def _accumulate_grads(meta: nn.Module, fast: nn.Module) -> None:
    """First-order MAML: add the clone's current gradients to the meta generator's."""
    for slow, adapted in zip(meta.parameters(), fast.parameters(), strict=True):
        if adapted.grad is None:
            continue
        if slow.grad is None:
            slow.grad = adapted.grad.detach().clone()
        else:
            slow.grad.add_(adapted.grad.detach())
