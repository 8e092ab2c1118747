"""Differentially private gradient matching (``dp-gm``).

Per outer step (one noisy release): every local record is Poisson-sampled with rate q; Opacus'
``GradSampleModule`` computes each sampled record's gradient of its own classification loss (the
GroupNorm ConvNet has per-sample gradients); each per-sample gradient (all weights, flattened) is
clipped to L2 norm ``clip``; the clipped gradients are summed per class, Gaussian noise
N(0, (noise_multiplier * clip)^2 I) is added to every class sum, and the result is divided by the
expected class batch q * n_c. The synthetic images are matched to these noisy class gradients.

Privacy: as in ``dp-dm``, one release (all class sums of one outer step) is one subsampled Gaussian
mechanism with sensitivity ``clip`` under add/remove-one-record neighbouring; Opacus' RDP accountant
composes ``iterations * outer_loop`` releases. Training the matching net on the synthetic set between
releases is post-processing.

Randomness: the Poisson masks and the noise come from ``shared.privacy.secret_generator`` (OS entropy, a
fresh generator per run), never from ``condense.seed``; the seeded generator only drives the public draws
(noise init, DSA parameters, batches of the synthetic set for the inner loop).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from opacus import GradSampleModule

from client.condense.base import LocalData, PrivacyReport, condensers
from client.condense.gm import GradientMatching, Gradients
from shared.augment.dsa import AugmentParams, SiameseAugment
from shared.config.condense import CondenseConfig
from shared.privacy import PrivacyPlan, clip_rows, plan_privacy, poisson_mask, secret_generator


@condensers.register("dp-gm")
class DPGradientMatching(GradientMatching):
    name = "dp-gm"

    def planned_releases(self, cfg: CondenseConfig) -> int:
        return cfg.iterations * self.schedule(cfg)[0]  # what GradientMatching.synthesize passes to begin

    def begin(self, local: LocalData, cfg: CondenseConfig, releases: int) -> None:
        self.plan: PrivacyPlan = plan_privacy(cfg, len(local.labels), local.num_groups, releases=releases)
        self.expected_batch = [max(1.0, local.counts[c] * self.plan.sample_rate) for c in local.classes]
        self.secret = secret_generator()  # Poisson masks and noise; ``generator`` (seeded) never touches them

    def real_gradients(self, net: torch.nn.Module, local: LocalData, cfg: CondenseConfig, generator: torch.Generator,
                       augment: SiameseAugment | None, params: AugmentParams | None) -> list[Gradients]:
        plan = self.plan
        weights = list(net.parameters())
        shapes = [w.shape for w in weights]
        total = sum(w.numel() for w in weights)
        index = torch.nonzero(poisson_mask(len(local.labels), plan.sample_rate, self.secret)).flatten().to(local.device)
        for module in net.modules():  # full backward hooks forbid in-place ops on hooked outputs
            if isinstance(module, torch.nn.ReLU):
                module.inplace = False
        sampler = GradSampleModule(net, loss_reduction="sum")
        try:
            out = []
            for k in range(local.num_groups):
                chosen = index[local.group_of[index] == k]
                summed = _clipped_sum(sampler, weights, local, chosen, augment, params, plan.clip, total)
                noise = torch.randn(total, generator=self.secret) * plan.noise_std
                noisy = (summed + noise.to(summed.device)) / self.expected_batch[k]
                out.append([part.view(shape) for part, shape in zip(noisy.split([s.numel() for s in shapes]),
                                                                     shapes, strict=True)])
        finally:
            sampler.remove_hooks()
            for w in weights:
                w.grad_sample = None
                w.grad = None
        plan.record_release()
        return out

    def report(self) -> PrivacyReport:
        plan = self.plan
        return PrivacyReport(plan.epsilon(), plan.delta, plan.accountant.name, plan.noise_multiplier,
                             plan.sample_rate, plan.steps, plan.clip)


def _clipped_sum(sampler: GradSampleModule, weights: list[torch.Tensor], local: LocalData, chosen: torch.Tensor,
                 augment: SiameseAugment | None, params: AugmentParams | None, clip: float, total: int) -> torch.Tensor:
    """Sum over ``chosen`` records of their per-sample loss gradients, each clipped to L2 norm ``clip``."""
    if len(chosen) == 0:
        return torch.zeros(total, device=local.device)
    x = local.images[chosen]
    if augment is not None and params is not None:
        x = augment.apply(x, params, local.group_of[chosen])
    for w in weights:
        w.grad_sample = None
    F.cross_entropy(sampler(x), local.labels[chosen], reduction="sum").backward()
    per_sample = torch.cat([w.grad_sample.reshape(len(chosen), -1) for w in weights], dim=1)
    for w in weights:
        w.grad = None
    return clip_rows(per_sample, clip).sum(dim=0)
