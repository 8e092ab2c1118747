"""Model-inversion loss terms shared by the base methods (Eq. 1 of the paper plus BN-statistics matching).

* ``BNStatistics``: forward hooks on the teacher's BatchNorm layers that, while ``active``, measure how far
  the batch statistics of the synthetic images are from the running statistics (DeepInversion).
* ``one_hot_loss``: cross-entropy of the teacher on the pseudo-classes assigned to the latent codes.
* ``adversarial_loss``: minus the teacher-student KL divergence on samples where both agree, so the
  generator seeks samples the student has not learnt yet (as in Fast/CMI)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn import functional as F

from shared.models import batchnorm_layers


class BNStatistics:
    """Collects the BN-statistics loss of the teacher's last forward pass while ``active()``.

    With ``momentum`` m > 0 (Fast-Datafree's ``bn_mmt``) the statistics compared with the running ones are
    ``(1 - m) * batch + m * ema``, where ``ema`` is an exponential average of earlier *synthesised* batches
    (``update_momentum()`` after each batch): one small batch need not match the whole dataset's statistics
    alone, only together with the batches before it."""

    def __init__(self, teacher: nn.Module, momentum: float = 0.0) -> None:
        self.layers = batchnorm_layers(teacher)
        self.momentum = momentum
        self._enabled = False
        self._terms: list[torch.Tensor] = []
        self._last: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.ema: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._index = {id(layer): i for i, layer in enumerate(self.layers)}
        self._handles = [layer.register_forward_hook(self._hook) for layer in self.layers]

    def _hook(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], _output: torch.Tensor) -> None:
        if not self._enabled:
            return
        x = inputs[0]
        mean = x.mean(dim=(0, 2, 3))
        var = x.var(dim=(0, 2, 3), unbiased=False)
        assert isinstance(module, nn.BatchNorm2d) and module.running_mean is not None
        i = self._index[id(module)]
        self._last[i] = (mean.detach(), var.detach())
        if self.momentum > 0 and i in self.ema:
            ema_mean, ema_var = self.ema[i]
            mean = (1 - self.momentum) * mean + self.momentum * ema_mean
            var = (1 - self.momentum) * var + self.momentum * ema_var
        self._terms.append(torch.linalg.vector_norm(mean - module.running_mean)
                           + torch.linalg.vector_norm(var - module.running_var))

    @contextmanager
    def active(self) -> Iterator[None]:
        """Record the statistics of forward passes inside the block (and only those)."""
        self._terms = []
        self._enabled = True
        try:
            yield
        finally:
            self._enabled = False

    def loss(self) -> torch.Tensor:
        """Sum over BN layers of the mean and variance distances recorded in the last ``active`` block."""
        if not self._terms:
            return torch.zeros(())
        return torch.stack(self._terms).sum()

    def update_momentum(self) -> None:
        """Fold the last recorded batch statistics into the average (call once per synthesised batch)."""
        if self.momentum <= 0:
            return
        for i, (mean, var) in self._last.items():
            if i in self.ema:
                ema_mean, ema_var = self.ema[i]
                mean = self.momentum * ema_mean + (1 - self.momentum) * mean
                var = self.momentum * ema_var + (1 - self.momentum) * var
            self.ema[i] = (mean, var)

    def state_dict(self) -> dict[str, list[torch.Tensor]]:
        return {str(i): [m.cpu(), v.cpu()] for i, (m, v) in self.ema.items()}

    def load_state_dict(self, state: dict[str, list[torch.Tensor]]) -> None:
        device = self.layers[0].running_mean.device if self.layers and self.layers[0].running_mean is not None \
            else torch.device("cpu")
        self.ema = {int(i): (m.to(device), v.to(device)) for i, (m, v) in state.items()}

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


def one_hot_loss(teacher_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(teacher_logits, targets)


def adversarial_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0
                     ) -> torch.Tensor:
    """-KL(teacher || student) on samples whose teacher and student predictions agree (0 if none)."""
    t = F.log_softmax(teacher_logits / temperature, dim=1)
    s = F.log_softmax(student_logits / temperature, dim=1)
    kl = (t.exp() * (t - s)).sum(dim=1)
    agree = (student_logits.argmax(1) == teacher_logits.argmax(1)).float()
    return -(kl * agree).mean()


def balanced_targets(n: int, num_classes: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Pseudo-classes for a batch: every class equally often (up to remainder), in random order."""
    targets = torch.arange(n) % num_classes
    return targets[torch.randperm(n)].to(device)


@contextmanager
def frozen(*modules: nn.Module) -> Iterator[None]:
    """Turn off parameter gradients (inputs still get them): saves the weight-gradient work in backward."""
    params = [p for m in modules for p in m.parameters()]
    states = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, state in zip(params, states, strict=True):
            p.requires_grad_(state)
