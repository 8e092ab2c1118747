"""Data-to-model distillation (``d2m``; Sajedi et al., arXiv 2411.12841): the dataset goes into a generator.

A conditional generator (pre-trained adversarially on the site's images; the paper starts from a
pre-trained BigGAN) is refined with

    L = L_EM + lambda * L_PM

against a network drawn from the pool every step (fresh random ConvNets and snapshots of a briefly
trained one). **Embedding matching** L_EM: for every conv block, the attention map
a(f) = sum_channels |f_c|^p (p = ``condense.attention_power``, DataDAM's 4), flattened and L2-normalised
per image; plus the final embedding, as DataDAM's last-layer term. Per class, the squared distance of the
real and generated means, summed over blocks and classes. **Prediction matching** L_PM: per class,
KL(softmax(z_real / T) || softmax(z_gen / T)) of the mean softened predictions, T = ``condense.pm_temperature``
(4), lambda = ``condense.pm_weight`` (10). No discriminator while refining (the paper's default).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from client.condense.base import condensers
from client.condense.generative import GenerativeCondenser, class_kl
from shared.config.condense import CondenseConfig
from shared.models.base import Classifier


@condensers.register("d2m")
class D2M(GenerativeCondenser):
    name = "d2m"

    def record_statistics(self, net: Classifier, x: torch.Tensor, cfg: CondenseConfig) -> torch.Tensor:
        """[attention map of every block | final embedding | softened prediction], one row per image."""
        maps, h = [], x
        for layer in net.body:
            h = layer(h)
            if isinstance(layer, torch.nn.ReLU):
                maps.append(attention_map(h, cfg.attention_power))
        logits = net.head(h)
        self.layout = [m.shape[1] for m in maps] + [h.shape[1], logits.shape[1]]
        return torch.cat([*maps, h, torch.softmax(logits / cfg.pm_temperature, dim=1)], dim=1)

    def matching_loss(self, real: torch.Tensor, syn: torch.Tensor, cfg: CondenseConfig) -> torch.Tensor:
        *real_em, real_pm = real.split(self.layout, dim=1)
        *syn_em, syn_pm = syn.split(self.layout, dim=1)
        em = sum(((r - s) ** 2).sum() for r, s in zip(real_em, syn_em, strict=True))
        return em + cfg.pm_weight * class_kl(real_pm, syn_pm)


def attention_map(features: torch.Tensor, power: int) -> torch.Tensor:
    """sum over channels of |f|^p, flattened and L2-normalised per image (N x H*W)."""
    return F.normalize(features.abs().pow(power).sum(dim=1).flatten(1), dim=1)
