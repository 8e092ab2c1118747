"""Knowledge-distillation losses, by name (``distill.kd_loss``).

A KD loss maps ``(student_logits, teacher_logits, temperature)`` to one loss per sample (shape N), so
samplers that weight samples by difficulty (SSD-KD, a follow-up) can use the per-sample values; the loop
averages them. Adding a loss (e.g. logit-standardised KD) is one decorated function here."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.nn import functional as F

from shared.registry import Registry

KDLoss = Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]
kd_losses: Registry[KDLoss] = Registry("KD loss")


@kd_losses.register("kl")
def kl_divergence(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton et al.: T^2 * KL(softmax(t/T) || softmax(s/T)) per sample."""
    t = F.log_softmax(teacher_logits / temperature, dim=1)
    s = F.log_softmax(student_logits / temperature, dim=1)
    return (t.exp() * (t - s)).sum(dim=1) * temperature**2


def get_kd_loss(name: str) -> KDLoss:
    return kd_losses.get(name)
