"""Distribution matching (DM; Zhao & Bilen, WACV 2023), the CPU default.

Every iteration draws a fresh randomly initialised ConvNet (frozen) and moves the synthetic images so
that, for every held class, the mean embedding of the (DSA-augmented) synthetic images matches the mean
embedding of a random real batch under the same augmentation:

    loss = sum_c || mean_i phi(A_c(x_real_i)) - mean_j phi(A_c(s_j)) ||^2,   SGD on the pixels s.

All classes go through one forward pass per side (class id = DSA group), which is what makes DM cheap.
Subclasses change how the real-side target is formed (``dp-dm`` clips and adds noise).
"""

from __future__ import annotations

import torch

from client.condense.base import (
    Condenser,
    LocalData,
    PrivacyReport,
    Synthesis,
    TimeBudget,
    clamp_to_pixels,
    condensers,
    group_means,
    learnable,
    matching_net,
    sample_real,
)
from shared.augment.dsa import AugmentParams, SiameseAugment
from shared.config.condense import CondenseConfig
from shared.progress import progress_bar


@condensers.register("dm")
class DistributionMatching(Condenser):
    name = "dm"
    default_lr_img = 1.0  # the DM paper's value

    def synthesize(self, local: LocalData, cfg: CondenseConfig, generator: torch.Generator,
                   progress: bool) -> Synthesis:
        state = learnable(local, cfg, generator, self.lr_img(cfg))
        syn, groups, optimizer, augment = state.images, state.groups, state.optimizer, state.augment
        self.begin(local, cfg)
        losses: list[float] = []
        budget = TimeBudget(cfg.time_budget_s, cfg.time_budget_clock)
        with progress_bar(cfg.iterations, f"condense {self.name}", enabled=progress) as bar:
            for _ in range(cfg.iterations):
                net = matching_net(local, cfg).requires_grad_(False)
                params = augment.sample(local.num_groups, local.image_size) if augment else None
                target = self.real_target(net, local, cfg, generator, augment, params)
                embedded = _embed(net, _augmented(syn, groups, augment, params))
                loss = ((target - group_means(self.syn_embedding(embedded), groups, local.num_groups)) ** 2).sum()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                with torch.no_grad():
                    syn.copy_(clamp_to_pixels(syn, local.info))
                losses.append(float(loss.detach()))
                bar.advance(loss=losses[-1])
                if budget.exhausted():
                    break
        return Synthesis(syn.detach(), state.labels, len(losses), losses, self.report())

    # --- hooks the DP variant overrides ---
    def begin(self, local: LocalData, cfg: CondenseConfig) -> None:
        """Called once before the first iteration."""

    def real_target(self, net: torch.nn.Module, local: LocalData, cfg: CondenseConfig, generator: torch.Generator,
                    augment: SiameseAugment | None, params: AugmentParams | None) -> torch.Tensor:
        """Per-group mean embedding of a random real batch (G x D)."""
        index = sample_real(local, cfg.batch_real, generator)
        with torch.no_grad():
            embedded = _embed(net, _augmented(local.images[index], local.group_of[index], augment, params))
        return group_means(embedded, local.group_of[index], local.num_groups)

    def syn_embedding(self, embedded: torch.Tensor) -> torch.Tensor:
        return embedded

    def report(self) -> PrivacyReport | None:
        return None


def _embed(net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    _, features = net(x, return_features=True)
    return features


def _augmented(x: torch.Tensor, groups: torch.Tensor, augment: SiameseAugment | None,
               params: AugmentParams | None) -> torch.Tensor:
    if augment is None or params is None:
        return x
    return augment.apply(x, params, groups)
