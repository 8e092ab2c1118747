"""Generative dataset distillation with self-knowledge distillation (``gendd``; Li et al., arXiv 2501.04202).

A conditional GAN is pre-trained on the site's images, then refined (discriminator frozen) with

    L = L_CGAN(G) + lambda_SKD * tau^2 * L_SKD,   L_SKD = sum_c KL(d_c(real) || d_c(generated)),

where ``d`` is the softmax of the *standardised* logits Z(x; tau) = (x - mean(x)) / std(x) * tau of a model
drawn from the pool (fresh random ConvNets and snapshots of a briefly trained one), and ``d_c`` its mean over
the class-c images of a real and of a generated batch. The paper's values: tau = 2, lambda_SKD = 0.01 for
FMNIST and CIFAR-10 (``condense.skd_tau``, ``condense.skd_weight``). Its pool is ConvNet-3, ResNet-10 and
ResNet-18; here it is the CPU-sized ConvNet pool of ``generative.py`` (docs/condensation.md).
"""

from __future__ import annotations

import torch

from client.condense.base import condensers
from client.condense.generative import GenerativeCondenser, class_kl, standardize
from shared.config.condense import CondenseConfig
from shared.models.base import Classifier


@condensers.register("gendd")
class GenDD(GenerativeCondenser):
    name = "gendd"
    adversarial_refinement = True

    def record_statistics(self, net: Classifier, x: torch.Tensor, cfg: CondenseConfig) -> torch.Tensor:
        return torch.softmax(standardize(net(x), cfg.skd_tau), dim=1)

    def matching_loss(self, real: torch.Tensor, syn: torch.Tensor, cfg: CondenseConfig) -> torch.Tensor:
        return cfg.skd_weight * cfg.skd_tau ** 2 * class_kl(real, syn)
