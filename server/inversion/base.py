"""The interface every model-inversion method implements, and their registry.

A method owns a generator (and whatever optimisers it needs) and answers ``synthesize()`` with a new
``SyntheticBatch``. The shared generator objective lives here so that every base method gets the same
three MI terms (BN statistics, one-hot, adversarial) plus, when the run is guided, the feature-alignment
term and discriminator step of ``FeatureAlignment`` -- this is what makes guidance "composable with every
base method". A new method (e.g. ``cmi``) is one file: subclass, register, override ``synthesize`` and,
for an extra loss such as a contrastive term, ``extra_losses``."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from server.inversion.generator import Generator, NoisyLayers
from server.inversion.losses import BNStatistics, adversarial_loss, balanced_targets, frozen, one_hot_loss
from server.run import backward
from shared.config.distill import DistillConfig
from shared.errors import ConfigError
from shared.registry import Registry
from shared.train import augment_batch


@dataclass
class SyntheticBatch:
    """A batch of synthetic images (normalised, detached) with the teacher's view of them."""

    images: torch.Tensor  # float32 N x C x H x W, normalised space
    targets: torch.Tensor  # int64 N: teacher's predicted class (the pseudo-label)
    teacher_logits: torch.Tensor  # float32 N x num_classes on exactly ``images`` (reused by KD)
    losses: dict[str, float] = field(default_factory=dict)  # last generator step's loss terms
    requested: torch.Tensor | None = None  # int64 N: the classes the generator was asked for
    features: torch.Tensor | None = None  # teacher penultimate features of ``images`` (None if not exposed)


@dataclass
class InversionContext:
    """Everything a method may use. The teacher is frozen and in eval mode; the student is trained by KD."""

    teacher: nn.Module
    student: nn.Module
    generator: Generator
    num_classes: int
    cfg: DistillConfig
    device: torch.device
    guidance: Any = None  # FeatureAlignment | None (typed loosely to avoid an import cycle)
    epoch: int = 0  # updated by the distillation loop; the adversarial term is off while < warmup_epochs


class InversionMethod(ABC):
    """Synthesises batches from the teacher (and student, condensed guidance) via a generator."""

    name = ""

    def __init__(self, ctx: InversionContext) -> None:
        self.ctx = ctx
        self.bn_stats = BNStatistics(ctx.teacher, ctx.cfg.bn_momentum)
        if ctx.cfg.bn_weight > 0 and not self.bn_stats.layers:
            raise ConfigError(
                f"distill.bn_weight={ctx.cfg.bn_weight} but the teacher has no BatchNorm layers (or is TorchScript, "
                "whose layers cannot be hooked); set distill.bn_weight=0 or use a zoo teacher with BatchNorm"
            )

    def close(self) -> None:
        """Remove this method's hooks from the teacher, which outlives the run (and may serve the next)."""
        self.bn_stats.remove()

    @abstractmethod
    def synthesize(self) -> SyntheticBatch:
        """Run this method's optimisation for one batch and return the synthetic samples."""

    # -- shared pieces ---------------------------------------------------------------------------------
    def noisy_layers(self) -> NoisyLayers | None:
        """Fresh NAYER-style noisy maps for one batch (``distill.noisy_groups``; None when 0)."""
        cfg = self.ctx.cfg
        if not cfg.noisy_groups:
            return None
        groups = min(cfg.noisy_groups, cfg.synthesis_batch_size)
        return NoisyLayers(groups, self.ctx.generator.latent_dim, self.ctx.device, on=cfg.noisy_on)

    def sample_targets(self) -> torch.Tensor:
        return balanced_targets(self.ctx.cfg.synthesis_batch_size, self.ctx.num_classes, self.ctx.device)

    def extra_losses(self, images: torch.Tensor, view: torch.Tensor, teacher_logits: torch.Tensor
                     ) -> dict[str, torch.Tensor]:
        """Weighted extra generator terms of a subclass (e.g. CMI's contrastive loss); none by default.

        ``images`` are the generator's output, ``view`` the augmented view the teacher judged."""
        del images, view, teacher_logits
        return {}

    def augment(self, images: torch.Tensor) -> torch.Tensor:
        """The view the teacher judges: a random crop (zero padding of 1/8 of the side) and/or flip of each
        normalised image, differentiable (Fast-Datafree and CMI invert through such an augmentation, so the
        generator cannot satisfy the teacher with pixel-exact adversarial patterns)."""
        policy = self.ctx.cfg.synthesis_augment
        if policy == "none":
            return images
        generator = self.ctx.generator
        pixels = images * generator.std + generator.mean
        return (augment_batch(pixels, policy) - generator.mean) / generator.std

    def generator_loss(self, images: torch.Tensor, targets: torch.Tensor
                       ) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        """L_G = L_MI (+ extra terms) (+ fa_weight * L_FA when guided), on an augmented view of ``images``.

        Returns the total loss, its weighted terms (each differentiable) and the teacher logits of the view."""
        ctx, cfg = self.ctx, self.ctx.cfg
        view = self.augment(images)
        with self.bn_stats.active():
            t_logits = ctx.teacher(view)
        terms: dict[str, torch.Tensor] = {
            "bn": cfg.bn_weight * self.bn_stats.loss().to(images.device),
            "oh": cfg.oh_weight * one_hot_loss(t_logits, targets),
        }
        if cfg.adv_weight > 0 and ctx.epoch >= cfg.warmup_epochs:
            with frozen(ctx.student):
                s_logits = ctx.student(view)
            terms["adv"] = cfg.adv_weight * adversarial_loss(s_logits, t_logits)
        terms.update(self.extra_losses(images, view, t_logits))
        if ctx.guidance is not None:
            terms["fa"] = cfg.fa_weight * ctx.guidance.generator_loss(images, t_logits.argmax(1).detach())
        total = torch.stack(list(terms.values())).sum()
        return total, terms, t_logits

    def after_generator_step(self) -> dict[str, float]:
        """Train the discriminator on the features of the step that just ran (guided runs only)."""
        if self.ctx.guidance is None:
            return {}
        return self.ctx.guidance.discriminator_step()

    def generator_step(self, generator: Generator, z: torch.Tensor, targets: torch.Tensor,
                       optimizer: torch.optim.Optimizer) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
        """One optimisation step of ``generator`` (and of ``z`` if the optimiser holds it).

        Returns the images of this step (detached), their teacher logits and the loss terms."""
        images = generator(z, targets)
        total, terms, t_logits = self.generator_loss(images, targets)
        optimizer.zero_grad(set_to_none=True)
        backward(total)
        optimizer.step()
        logs = {k: float(v.detach()) for k, v in terms.items()} | {"g_loss": float(total.detach())}
        logs |= self.after_generator_step()
        return images.detach(), t_logits.detach(), logs

    def batch(self, images: torch.Tensor, targets: torch.Tensor, logs: dict[str, float]) -> SyntheticBatch:
        """The batch as stored: the teacher's logits on the un-augmented images (what KD reuses) and, in the
        logs, how well they meet the targets; folds the batch into the BN-statistics momentum."""
        self.bn_stats.update_momentum()
        features = None
        with torch.no_grad():
            if int(getattr(self.ctx.teacher, "feature_dim", 0)) > 0:
                logits, features = self.ctx.teacher(images, return_features=True)
            else:
                logits = self.ctx.teacher(images)
        logits = logits.float()
        return SyntheticBatch(images, logits.argmax(1), logits, logs, targets, features)

    def state_dict(self) -> dict[str, Any]:
        """BN-statistics momentum (subclasses add their optimisers; the generator is saved by the run)."""
        return {"bn_ema": self.bn_stats.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.bn_stats.load_state_dict(state.get("bn_ema", {}))


inversion_methods: Registry[type[InversionMethod]] = Registry("inversion method")


def build_method(name: str, ctx: InversionContext) -> InversionMethod:
    """Instantiate the registered method ``name`` (raises UnknownNameError listing the known names)."""
    return inversion_methods.get(name)(ctx)
