"""Few-shot real samples (``real``): ``ipc`` random real images per held class, the paper's "RS" setting.

These are real records, so this method cannot be differentially private; ``CondenseConfig.validate``
refuses a privacy budget for it.
"""

from __future__ import annotations

import torch

from client.condense.base import Condenser, LocalData, Synthesis, condensers, synthetic_counts
from shared.config.condense import CondenseConfig


@condensers.register("real")
class FewShotReal(Condenser):
    name = "real"

    def synthesize(self, local: LocalData, cfg: CondenseConfig, generator: torch.Generator,
                   progress: bool) -> Synthesis:
        picks = [m[torch.randperm(len(m), generator=generator)[:n]] for m, n in
                 zip(local.members, synthetic_counts(local, cfg.ipc), strict=True)]
        index = torch.cat(picks).to(local.device)
        return Synthesis(local.images[index].clone(), local.labels[index].clone(), iterations=0)
