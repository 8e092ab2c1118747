"""Differential privacy for the generative condensers (``dp-d2m``, ``dp-gendd``).

Private data reaches the generator through two losses only, and each is a subsampled Gaussian mechanism:

* **the discriminator's real-image loss** (pre-training): DP-SGD. Every record is Poisson-sampled with rate
  q; Opacus' ``GradSampleModule`` gives each sampled record's gradient of softplus(-D(x, y)) on all
  discriminator weights; each is clipped to L2 norm ``clip``; they are summed, Gaussian noise
  N(0, (noise_multiplier * clip)^2 I) is added and the sum is divided by the expected batch q * N. The
  generated-image half of the discriminator loss touches no private data and is added unclipped. The
  generator's update is post-processing of the noisy discriminator.
* **the real side of the matching loss** (refinement): every record is Poisson-sampled with rate q, its
  statistics row (d2m: attention maps, embedding and softened prediction; gendd: softmax of the
  standardised logits) under the drawn pool net is clipped to ``clip``, rows are summed per class and noise
  N(0, (noise_multiplier * clip)^2) is added to every class sum (a record is in one class: the vector of all
  class sums has sensitivity ``clip``), then divided by the expected class batch q * n_c. The generated side
  is clipped alike.

Both kinds of step use the same q and noise multiplier; Opacus' RDP accountant composes all of them
(``gan_steps + iterations`` planned; a time budget that stops early reports the smaller epsilon of the
steps taken). The pool net is trained on *generated* images (post-processing), never on private ones.
Masks and noise come from ``shared.privacy.secret_generator`` (OS entropy), never from ``condense.seed``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from opacus import GradSampleModule

from client.condense.base import LocalData, PrivacyReport
from client.condense.generative import POOL_BATCH, GanState, GenerativeCondenser, held_labels
from shared.config.condense import CondenseConfig
from shared.data import normalize
from shared.models.base import Classifier
from shared.models.generators import ConditionalGenerator
from shared.privacy import PrivacyPlan, clip_rows, noisy_class_sums, plan_privacy, poisson_mask, secret_generator


class DPGenerative(GenerativeCondenser):
    """The DP template: mix in before ``D2M`` / ``GenDD``."""

    def planned_releases(self, cfg: CondenseConfig) -> int:
        return cfg.gan_steps + cfg.iterations

    def begin(self, local: LocalData, cfg: CondenseConfig) -> None:
        self.plan: PrivacyPlan = plan_privacy(cfg, len(local.labels), local.num_groups,
                                              releases=self.planned_releases(cfg))
        counts = torch.tensor([local.counts[c] for c in local.classes], dtype=torch.float32, device=local.device)
        self.expected_class_batch = (counts * self.plan.sample_rate).clamp(min=1.0).unsqueeze(1)
        self.expected_batch = max(1.0, len(local.labels) * self.plan.sample_rate)
        self.secret = secret_generator()

    def sampled(self, local: LocalData) -> torch.Tensor:
        mask = poisson_mask(len(local.labels), self.plan.sample_rate, self.secret)
        return torch.nonzero(mask).flatten().to(local.device)

    def disc_update(self, state: GanState, local: LocalData, cfg: CondenseConfig, generator: torch.Generator,
                    fake: torch.Tensor, fake_labels: torch.Tensor) -> None:
        state.opt_d.zero_grad(set_to_none=True)
        F.softplus(state.disc(fake, fake_labels)).mean().backward()  # public half: generated images only
        weights = [w for w in state.disc.parameters()]
        public = [w.grad.detach().clone() for w in weights]
        private = self.noisy_disc_gradient(state.disc, weights, local, self.sampled(local))
        for w, pub, priv in zip(weights, public, private, strict=True):
            w.grad = pub + priv
        state.opt_d.step()
        self.plan.record_release()

    def noisy_disc_gradient(self, disc: torch.nn.Module, weights: list[torch.Tensor], local: LocalData,
                            index: torch.Tensor) -> list[torch.Tensor]:
        """(sum of clipped per-record gradients of the real loss + noise) / expected batch, per weight."""
        total = sum(w.numel() for w in weights)
        summed = torch.zeros(total, device=local.device)
        if len(index):
            sampler = GradSampleModule(disc, loss_reduction="sum")
            try:
                for w in weights:
                    w.grad, w.grad_sample = None, None
                F.softplus(-sampler(local.images[index], local.labels[index])).sum().backward()
                per_sample = torch.cat([w.grad_sample.reshape(len(index), -1) for w in weights], dim=1)
                summed = clip_rows(per_sample, self.plan.clip).sum(dim=0)
            finally:
                sampler.remove_hooks()
                for w in weights:
                    w.grad, w.grad_sample = None, None
        noise = torch.randn(total, generator=self.secret) * self.plan.noise_std
        noisy = (summed + noise.to(summed.device)) / self.expected_batch
        return [part.view_as(w) for part, w in zip(noisy.split([w.numel() for w in weights]), weights, strict=True)]

    def real_means(self, net: Classifier, local: LocalData, cfg: CondenseConfig,
                   generator: torch.Generator) -> torch.Tensor:
        index = self.sampled(local)
        groups = local.group_of[index]
        with torch.no_grad():
            values = self.record_statistics(net, local.images[index], cfg) if len(index) else None
            if values is None:  # nothing sampled: the release is pure noise (still charged)
                probe = self.record_statistics(net, local.images[:1], cfg)
                values = torch.zeros(0, probe.shape[1], device=local.device)
            sums = noisy_class_sums(values, groups, local.num_groups, self.plan.clip, self.plan.noise_multiplier,
                                    self.secret)
        self.plan.record_release()
        return sums / self.expected_class_batch

    def syn_statistics(self, net: Classifier, x: torch.Tensor, cfg: CondenseConfig) -> torch.Tensor:
        return clip_rows(self.record_statistics(net, x, cfg), self.plan.clip)

    def pool_batch(self, gen: ConditionalGenerator, local: LocalData,
                   generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Generated images (post-processing of the DP generator): the pool never sees private records."""
        labels = held_labels(local, POOL_BATCH, generator)
        with torch.no_grad():
            return normalize(gen.sample(labels, generator), local.info), labels

    def report(self) -> PrivacyReport:
        plan = self.plan
        return PrivacyReport(plan.epsilon(), plan.delta, plan.accountant.name, plan.noise_multiplier,
                             plan.sample_rate, plan.steps, plan.clip)



