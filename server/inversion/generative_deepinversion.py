"""``generative-deepinversion``: a persistent generator trained with DeepInversion's objective (``deepinversion``
is Yin et al.'s own method: pixels optimised per batch).

Each ``synthesize()`` draws fresh latent codes and balanced pseudo-classes and takes ``g_steps`` Adam
steps on the shared generator with BN-statistics matching + one-hot cross-entropy + the adversarial
student-teacher disagreement term (off during warm-up), plus L_FA when guided. The images of the last
step are the new batch (generator-based DeepInversion, as in DAFL/DFAD-style data-free KD). Called
``deepinversion`` until 2026-12-01: benchmark figures labelled so before then are this method."""

from __future__ import annotations

from typing import Any

import torch

from server.inversion.base import InversionContext, InversionMethod, SyntheticBatch, inversion_methods


@inversion_methods.register("generative-deepinversion")
class GenerativeDeepInversion(InversionMethod):
    name = "generative-deepinversion"

    def __init__(self, ctx: InversionContext) -> None:
        super().__init__(ctx)
        self.optimizer = torch.optim.Adam(ctx.generator.parameters(), lr=ctx.cfg.lr_generator, betas=(0.5, 0.999))

    def synthesize(self) -> SyntheticBatch:
        ctx = self.ctx
        ctx.generator.train()
        z = ctx.generator.sample_latent(ctx.cfg.synthesis_batch_size, ctx.device)
        targets = self.sample_targets()
        logs: dict[str, float] = {}
        for _ in range(ctx.cfg.g_steps):
            images, _, logs = self.generator_step(ctx.generator, z, targets, self.optimizer)
        return self.batch(images, targets, logs)

    def state_dict(self) -> dict[str, Any]:
        return super().state_dict() | {"optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.optimizer.load_state_dict(state["optimizer"])
