"""``kd_loss = kl_logit_std``: KD with logit standardisation (Sun et al., CVPR 2024; also used by the
self-KD dataset-distillation paper ``../shared/papers/003_*``).

Each sample's teacher and student logit vectors are z-scored over the classes, z' = (z - mean(z)) / std(z),
before the usual temperature softmax and KL divergence:

    loss_i = T^2 * KL( softmax(z'_t,i / T) || softmax(z'_s,i / T) )

so the student has to match the teacher's *relations* between classes, not the range or offset of its
logits (a small heterogeneous student often cannot reach a large teacher's logit scale). Equivalently,
each sample gets its own temperature T * std(z_i): ``T`` is the *base* temperature. Standardised logits
have unit spread, so the base temperature that suits them is smaller than for raw logits (Sun et al. use
about 2, the raw-logit default here is 4): set ``distill.temperature`` together with
``distill.kd_loss=kl_logit_std`` (the benchmark case does: ``benchmarks/distillation/breadth.py``).
T^2 keeps the gradient scale comparable across temperatures, as in Hinton et al."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from server.distillation.kd_losses import kd_losses

# Guards the division for a sample whose logits are all equal (std 0): its z-scores become 0, i.e. uniform.
STD_EPS = 1e-6


def standardize_logits(logits: torch.Tensor) -> torch.Tensor:
    """Z-score each row over the classes (population std; rows with zero spread map to zeros)."""
    mean = logits.mean(dim=1, keepdim=True)
    std = logits.std(dim=1, keepdim=True, unbiased=False)
    return (logits - mean) / (std + STD_EPS)


@kd_losses.register("kl_logit_std")
def kl_logit_std(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per-sample T^2 * KL(softmax(Z(t)/T) || softmax(Z(s)/T)) with Z the per-sample z-score (shape N)."""
    t = F.log_softmax(standardize_logits(teacher_logits.float()) / temperature, dim=1)
    s = F.log_softmax(standardize_logits(student_logits.float()) / temperature, dim=1)
    return (t.exp() * (t - s)).sum(dim=1) * temperature**2
