"""DP distribution matching with decoupled sampling and optimisation (``dp-dos``).

``dp-dm`` pays for every optimisation step with a fresh noisy release, so a site at epsilon 10 can afford
only a few dozen steps, each matched against a very noisy target. ``dp-dos`` follows the decoupled
optimisation and sampling (DOS) of Zheng et al., "Improving Noise Efficiency in Privacy-preserving Dataset
Distillation" (arXiv 2508.01749, "Dosser"): gather the noisy signals first, then optimise against them for as
many steps as the time allows, which is post-processing and costs no privacy. Their subspace projection
(SER) needs public auxiliary data and is left out.

1. **Release** (``condense.dos_releases`` = R times, the only part that touches private data): draw a random
   embedding net and a DSA augmentation (both public: seeded, data-independent); Poisson-sample the records
   at rate q; embed each sampled record, clip the embedding to L2 norm ``clip * sqrt(1 - b^2)`` and append the
   constant ``clip * b`` (b = ``COUNT_NORM``), so each record's row has norm <= ``clip``; sum the rows per class
   and add N(0, (sigma * clip)^2) to every coordinate of every class sum (``noisy_class_sums``). One release is
   one subsampled Gaussian mechanism of sensitivity ``clip`` over all classes (records belong to one class);
   Opacus' RDP accountant composes the R releases.
2. **Counts from the releases**: the appended coordinate sums to ``clip * b * m_c`` (m_c: records of class c
   sampled) plus noise, so its average over the R releases estimates q * n_c with noise sigma / (b sqrt(R))
   and no extra release; the exact class counts are never used.
3. **Optimise** (``condense.iterations`` steps, public computation only): step t matches the synthetic
   images, under release r = t mod R's net and augmentation, to that release's noisy class mean (feature part
   of the noisy sum / the estimated count); the synthetic side is clipped alike. The images start from noise.

The time budget is split: releases stop at ``RELEASE_SHARE`` of ``time_budget_s`` (a run that releases fewer
spends less epsilon, and reports what it spent), optimisation uses the rest.

Randomness: Poisson masks and noise come from ``shared.privacy.secret_generator`` (OS entropy); the seeded
generator drives only public draws (noise init, DSA parameters; the nets use the global seed).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from client.condense.base import (
    LocalData,
    Synthesis,
    TimeBudget,
    clamp_to_pixels,
    condensers,
    group_means,
    learnable,
    matching_net,
)
from client.condense.dm import _augmented, _embed
from client.condense.dp_dm import DPDistributionMatching
from shared.augment.dsa import AugmentParams, SiameseAugment
from shared.config.condense import CondenseConfig
from shared.errors import DataError
from shared.privacy import clip_rows, noisy_class_sums, plan_privacy, poisson_mask, secret_generator
from shared.progress import progress_bar

COUNT_NORM = 0.3  # share b of each row's norm spent on the count coordinate (features keep sqrt(1 - b^2) = 0.95)
RELEASE_SHARE = 0.5  # at most this share of condense.time_budget_s goes to the releases
CHUNK = 1024  # records embedded per forward pass in a release


def feature_clip(clip: float) -> float:
    """The L2 bound of a record's embedding part: its row's bound ``clip`` minus the count coordinate."""
    return clip * math.sqrt(1.0 - COUNT_NORM**2)


@dataclass
class Release:
    """One noisy signal: the public net and augmentation it was taken under, and the noisy class sums."""

    net: torch.nn.Module
    params: AugmentParams | None
    sums: torch.Tensor  # G x (D + 1): clipped feature sums and the count coordinate, plus noise


@condensers.register("dp-dos")
class DecoupledDPDistributionMatching(DPDistributionMatching):
    name = "dp-dos"

    def planned_releases(self, cfg: CondenseConfig) -> int:
        return cfg.dos_releases

    def synthesize(self, local: LocalData, cfg: CondenseConfig, generator: torch.Generator,
                   progress: bool) -> Synthesis:
        budget = TimeBudget(cfg.time_budget_s, cfg.time_budget_clock)  # releases and optimisation together
        state = learnable(local, cfg, generator, self.lr_img(cfg))
        self.begin(local, cfg)
        releases = self._releases(local, cfg, state.augment, progress)
        targets = self._targets(releases)
        losses: list[float] = []
        with progress_bar(cfg.iterations, f"condense {self.name} (optimise)", enabled=progress) as bar:
            for step in range(cfg.iterations):
                release, target = releases[step % len(releases)], targets[step % len(releases)]
                embedded = _embed(release.net, _augmented(state.images, state.groups, state.augment, release.params))
                syn = group_means(clip_rows(embedded, feature_clip(cfg.clip)), state.groups, local.num_groups)
                loss = ((target - syn) ** 2).sum()
                state.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                state.optimizer.step()
                with torch.no_grad():
                    state.images.copy_(clamp_to_pixels(state.images, local.info))
                losses.append(float(loss.detach()))
                bar.advance(loss=losses[-1])
                if budget.exhausted():
                    break
        informative = self._informative(targets)
        if not bool(informative.any()):
            largest, sigma = float(self.sampled.max()), self.plan.noise_multiplier
            raise DataError(f"dp-dos: no class's noisy mean carries more signal than noise (largest class about "
                            f"{largest:.0f} sampled images, noise multiplier {sigma:.2f}); the site holds too few "
                            "images for this epsilon: raise condense.epsilon or lower condense.dos_releases")
        keep = informative[state.groups]
        return Synthesis(state.images.detach()[keep], state.labels[keep], len(losses), losses, self.report())

    def begin(self, local: LocalData, cfg: CondenseConfig) -> None:
        # q = 1 (every record in every release) unless condense.sample_rate says otherwise: with a fixed number
        # of releases the full batch gives the least noise per class mean at a given epsilon
        self.plan = plan_privacy(replace(cfg, sample_rate=cfg.sample_rate or 1.0), len(local.labels),
                                 local.num_groups, releases=self.planned_releases(cfg))
        self.secret = secret_generator()

    def _releases(self, local: LocalData, cfg: CondenseConfig, augment: SiameseAugment | None,
                  progress: bool) -> list[Release]:
        budget = TimeBudget(cfg.time_budget_s * RELEASE_SHARE, cfg.time_budget_clock)
        releases: list[Release] = []
        with progress_bar(cfg.dos_releases, f"condense {self.name} (release)", enabled=progress) as bar:
            for _ in range(cfg.dos_releases):
                net = matching_net(local, cfg).requires_grad_(False)
                params = augment.sample(local.num_groups, local.image_size) if augment else None
                releases.append(Release(net, params, self._release(net, local, augment, params)))
                bar.advance()
                if budget.exhausted():
                    break
        return releases

    @torch.no_grad()
    def _release(self, net: torch.nn.Module, local: LocalData, augment: SiameseAugment | None,
                 params: AugmentParams | None) -> torch.Tensor:
        plan = self.plan
        index = torch.nonzero(poisson_mask(len(local.labels), plan.sample_rate, self.secret)).flatten().to(local.device)
        rows, groups = [], local.group_of[index]
        for start in range(0, len(index), CHUNK):
            part = index[start:start + CHUNK]
            embedded = clip_rows(_embed(net, _augmented(local.images[part], local.group_of[part], augment, params)),
                                 feature_clip(plan.clip))
            rows.append(torch.cat([embedded, torch.full_like(embedded[:, :1], plan.clip * COUNT_NORM)], dim=1))
        values = torch.cat(rows) if rows else torch.zeros(0, net.feature_dim + 1, device=local.device)
        sums = noisy_class_sums(values, groups, local.num_groups, plan.clip, plan.noise_multiplier, self.secret)
        plan.record_release()
        return sums

    def _targets(self, releases: list[Release]) -> list[torch.Tensor]:
        """Each release's noisy class means: feature sums over the class count estimated from all releases."""
        count_column = torch.stack([r.sums[:, -1] for r in releases])  # R x G
        self.sampled = (count_column.mean(0) / (self.plan.clip * COUNT_NORM)).clamp(min=1.0)
        return [r.sums[:, :-1] / self.sampled.unsqueeze(1) for r in releases]

    def _informative(self, targets: list[torch.Tensor]) -> torch.Tensor:
        """Classes whose noisy mean carries more signal than noise (bool per group): the noise on a class mean
        has norm ~ sigma * clip * sqrt(D) / m_c, the signal at most the feature clip. Images of the other classes
        were matched to noise and would only mislabel noise, so the payload leaves them out (decided from the
        released estimates m_c alone: post-processing)."""
        dim = targets[0].shape[1]
        noise = self.plan.noise_multiplier * self.plan.clip * math.sqrt(dim) / self.sampled
        return noise <= feature_clip(self.plan.clip)

