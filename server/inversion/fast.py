"""``fast``: Fast-Datafree meta-synthesis (Fang et al. 2022), first-order variant.

Each ``synthesize()`` clones the shared (meta) generator, draws fresh latent codes and optimises the clone
*and* the codes for ``g_steps`` steps (few: the meta generator already knows "how to start"). The images
of the last step are the batch. Then the shared generator takes one Reptile-style meta step towards the
adapted clone (gradient = theta - theta_fast, Adam with lr_generator * g_steps), so later batches start
from a better initialisation without ever back-propagating through the inner loop."""

from __future__ import annotations

import copy
from typing import Any

import torch

from server.inversion.base import InversionContext, InversionMethod, SyntheticBatch, inversion_methods


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
        ctx.generator.train()
        fast = copy.deepcopy(ctx.generator)
        z = ctx.generator.sample_latent(cfg.synthesis_batch_size, ctx.device).requires_grad_(True)
        # A fresh inner optimiser per batch: the clone and its latents start from scratch every time.
        inner = torch.optim.Adam([{"params": fast.parameters()}, {"params": [z], "lr": cfg.lr_latent}],
                                 lr=cfg.lr_generator, betas=(0.5, 0.999))
        targets = self.sample_targets()
        logs: dict[str, float] = {}
        for _ in range(cfg.g_steps):
            images, t_logits, logs = self.generator_step(fast, z, targets, inner)
        self._meta_step(fast)
        return self.batch(images, t_logits, logs)

    def _meta_step(self, fast: torch.nn.Module) -> None:
        self.meta_optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            for slow, adapted in zip(self.ctx.generator.parameters(), fast.parameters(), strict=True):
                slow.grad = slow.detach() - adapted.detach()
            # BN running statistics are buffers, not parameters: carry the adapted ones over.
            for slow_b, fast_b in zip(self.ctx.generator.buffers(), fast.buffers(), strict=True):
                slow_b.copy_(fast_b)
        self.meta_optimizer.step()

    def state_dict(self) -> dict[str, Any]:
        return {"meta_optimizer": self.meta_optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.meta_optimizer.load_state_dict(state["meta_optimizer"])
