"""Condensed-guided feature alignment (the paper's "*", Eq. 2-4): composable with every base method.

The teacher's penultimate features of DiffAugment-ed synthetic and condensed images are judged by a small
class-conditional *projection* discriminator D(f, y) = w . h(f) + e_y . h(f), h = LeakyReLU(Linear(f)):
a few thousand parameters, so it does not overfit the few condensed samples (the paper uses the tiny
discriminator of Li et al. 2020 for the same reason). The discriminator sees three kinds of input:

* real  = (condensed feature, its label),
* fake  = (synthetic feature, the teacher's pseudo-label),
* fake  = (condensed feature, a wrong label)  -- so it cannot ignore the class;

and the generator's alignment loss L_FA = -log D(phi(x_hat), y_ps) (non-saturating form) pulls the
synthetic features of each class towards the condensed features of that class."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from server.inversion.losses import frozen
from server.run import backward
from shared.augment.diffaugment import diff_augment
from shared.errors import ConfigError


class ProjectionDiscriminator(nn.Module):
    """D(f, y) = w . h(f) + embed(y) . h(f): one hidden layer, a class embedding (Miyato & Koyama 2018)."""

    def __init__(self, feature_dim: int, num_classes: int, hidden: int = 64) -> None:
        super().__init__()
        self.hidden = nn.Sequential(nn.Linear(feature_dim, hidden), nn.LeakyReLU(0.2))
        self.score = nn.Linear(hidden, 1)
        self.embed = nn.Embedding(num_classes, hidden)
        nn.init.normal_(self.embed.weight, std=0.02)

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        h = self.hidden(features)
        return self.score(h).squeeze(1) + (self.embed(labels) * h).sum(dim=1)


@dataclass
class DiscriminatorInputs:
    """The three input types of one discriminator step (features are detached)."""

    real: tuple[torch.Tensor, torch.Tensor]
    synthetic: tuple[torch.Tensor, torch.Tensor]
    wrong_label: tuple[torch.Tensor, torch.Tensor]


class FeatureAlignment:
    """Owns the discriminator; gives the generator L_FA and trains D after each generator step."""

    def __init__(self, teacher: nn.Module, condensed_images: torch.Tensor, condensed_labels: torch.Tensor,
                 num_classes: int, feature_dim: int, hidden: int = 64, lr: float = 2e-3,
                 batch_size: int = 64, policy: str = "color,translation,cutout") -> None:
        if condensed_images.shape[0] == 0:
            raise ConfigError("feature alignment needs condensed samples; mode mi* requires --condensed")
        self.teacher = teacher
        self.images = condensed_images
        self.labels = condensed_labels
        self.num_classes = num_classes
        self.batch_size = batch_size
        self.policy = policy
        self.discriminator = ProjectionDiscriminator(feature_dim, num_classes, hidden).to(condensed_images.device)
        self.optimizer = torch.optim.Adam(self.discriminator.parameters(), lr=lr, betas=(0.5, 0.999))
        self._pending: tuple[torch.Tensor, torch.Tensor] | None = None
        self.last_inputs: DiscriminatorInputs | None = None

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Teacher penultimate features of DiffAugment-ed images (differentiable w.r.t. ``images``)."""
        _, feats = self.teacher(diff_augment(images, self.policy), return_features=True)
        return feats

    def generator_loss(self, images: torch.Tensor, pseudo_labels: torch.Tensor) -> torch.Tensor:
        """L_FA for a synthetic batch; remembers its features for the next ``discriminator_step``."""
        feats = self.features(images)
        with frozen(self.discriminator):
            loss = F.softplus(-self.discriminator(feats, pseudo_labels)).mean()
        self._pending = (feats.detach(), pseudo_labels.detach())
        return loss

    def _condensed_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        n = self.images.shape[0]
        idx = torch.randperm(n, device=self.images.device)[: min(self.batch_size, n)]
        with torch.no_grad():
            return self.features(self.images[idx]), self.labels[idx]

    def discriminator_inputs(self, synthetic: tuple[torch.Tensor, torch.Tensor]) -> DiscriminatorInputs:
        real_f, real_y = self._condensed_batch()
        # A uniformly random *different* class for every real feature.
        shift = torch.randint(1, self.num_classes, real_y.shape, device=real_y.device)
        return DiscriminatorInputs((real_f, real_y), synthetic, (real_f, (real_y + shift) % self.num_classes))

    def discriminator_step(self) -> dict[str, float]:
        """max L_D (Eq. 3-4) by one Adam step on BCE: real -> 1, synthetic and wrong-label -> 0."""
        if self._pending is None:
            return {}
        inputs = self.discriminator_inputs(self._pending)
        self._pending = None
        self.last_inputs = inputs
        d = self.discriminator
        real = F.softplus(-d(*inputs.real)).mean()
        fake = F.softplus(d(*inputs.synthetic)).mean()
        wrong = F.softplus(d(*inputs.wrong_label)).mean()
        loss = real + 0.5 * (fake + wrong)  # the two fake kinds share the weight of the real one
        self.optimizer.zero_grad(set_to_none=True)
        backward(loss)
        self.optimizer.step()
        parts = {"d_loss": loss, "d_real": real, "d_fake": fake, "d_wrong": wrong}
        return {k: float(v.detach()) for k, v in parts.items()}

    def state_dict(self) -> dict[str, Any]:
        return {"discriminator": self.discriminator.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.discriminator.load_state_dict(state["discriminator"])
        self.optimizer.load_state_dict(state["optimizer"])
