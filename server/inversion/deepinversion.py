"""``deepinversion``: DeepInversion and Adaptive DeepInversion (Yin et al. 2020, "Dreaming to Distill:
Data-free Knowledge Transfer via DeepInversion"), images optimised directly, batch by batch.

Each ``synthesize()`` makes a fresh batch of images a leaf tensor initialised from Gaussian noise (in the
teacher's normalised space) with balanced target classes, and takes ``g_steps`` Adam steps
(lr ``di_lr``) on the pixels only. Every step judges a randomly jittered (a roll of up to 1/16 of the
side in each direction: the CIFAR-10 script's 2 of 32 pixels) and randomly flipped view of the whole
batch, as upstream does, on

    L = bn_weight * R_feature + oh_weight * CE(T(v), y) + di_tv_l1 * TV_1(v) + di_tv_l2 * TV_2(v)
        + di_l2 * mean_i ||v_i||_2 + adv_weight * R_compete  [+ fa_weight * L_FA in mode mi*]

* R_feature: for every teacher BatchNorm layer, ||mu_batch - mu_running||_2 + ||var_batch - var_running||_2
  of its input (``BNStatistics`` with no momentum: the momentum over batches is Fast-Datafree's, not Yin's);
* TV_1 / TV_2: the mean absolute / the L2 norm of the differences to the right, lower, and both diagonal
  neighbours (upstream's ``get_image_prior_losses``); the L2 prior is the mean per-image norm;
* R_compete (Adaptive DeepInversion): 1 - JS(student || teacher) on the softmax at T = 3 with the
  probabilities clamped to [0.01, 0.99], so images where the student already agrees with the teacher cost
  more. It starts after ``warmup_epochs`` and probes the student (eval mode, parameters frozen).

After each step the pixels are clipped to the valid range [0, 1] (upstream clips in its ImageNet setting
and in Fast-Datafree; its CIFAR-10 script does not). The lowest-loss step's images are the batch (upstream
"best inputs"). With guidance the feature-alignment term and discriminator step of every base method apply.

Upstream values: r_feature 10 = ``bn_weight``'s default, Adam with default betas, TV-L2 2.5e-5, no TV-L1
and no L2 prior are the CIFAR-10 "paper parameters" of ``cifar10/deepinversion_cifar10.py``; its lr is
0.05 there and 0.1 in its "better" setting, and 0.1 is the default here (measured faster: docs/engine.md).
Upstream runs 2000 iterations per batch. ``g_steps`` (default 2, for the generator methods) sets the
iterations here: pixels from noise need hundreds, e.g. ``--set distill.g_steps=200``; see docs/engine.md
for the cost per step. The cross-entropy weight is the shared ``oh_weight`` (upstream 1)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch.nn import functional as F

from server.inversion.base import InversionContext, InversionMethod, SyntheticBatch, inversion_methods
from server.inversion.losses import BNStatistics, frozen, one_hot_loss
from server.run import backward

JITTER = 1 / 16  # largest roll per direction, as a fraction of the side (upstream CIFAR-10: 2 of 32 pixels)
ADI_TEMPERATURE = 3.0  # upstream's softmax temperature for the competition term
JS_CLAMP = (0.01, 0.99)  # upstream clamps the probabilities before the logs of the JS divergence


def jitter_and_flip(images: torch.Tensor) -> torch.Tensor:
    """One random roll (dy, dx) and, half of the time, a horizontal flip, for the whole batch (as upstream)."""
    height, width = images.shape[-2:]
    lim_y, lim_x = max(1, round(height * JITTER)), max(1, round(width * JITTER))
    dy = int(torch.randint(-lim_y, lim_y + 1, (1,)))
    dx = int(torch.randint(-lim_x, lim_x + 1, (1,)))
    view = torch.roll(images, shifts=(dy, dx), dims=(2, 3))
    return torch.flip(view, dims=(3,)) if bool(torch.rand(()) < 0.5) else view


def total_variation(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(TV_1, TV_2): summed over the four neighbour directions, the mean absolute and the L2 norm of the
    differences over the batch."""
    diffs = (images[:, :, :, :-1] - images[:, :, :, 1:], images[:, :, :-1, :] - images[:, :, 1:, :],
             images[:, :, 1:, :-1] - images[:, :, :-1, 1:], images[:, :, :-1, :-1] - images[:, :, 1:, 1:])
    tv_l1 = torch.stack([d.abs().mean() for d in diffs]).sum()
    tv_l2 = torch.stack([torch.linalg.vector_norm(d) for d in diffs]).sum()
    return tv_l1, tv_l2


def competition_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                     temperature: float = ADI_TEMPERATURE) -> torch.Tensor:
    """Adaptive DeepInversion's 1 - JS(P_student, P_teacher), JS in [0, 1] after upstream's clamping."""
    p = F.softmax(student_logits / temperature, dim=1)
    q = F.softmax(teacher_logits / temperature, dim=1)
    m = (0.5 * (p + q)).clamp(*JS_CLAMP)
    p, q = p.clamp(*JS_CLAMP), q.clamp(*JS_CLAMP)
    n = student_logits.shape[0]
    # KL(M || P) + KL(M || Q), batch mean: upstream's KLDivLoss(log P, M) and KLDivLoss(log Q, M)
    js = 0.5 * (m * (m.log() - p.log())).sum() / n + 0.5 * (m * (m.log() - q.log())).sum() / n
    return 1.0 - js.clamp(0.0, 1.0)


@inversion_methods.register("deepinversion")
class DeepInversion(InversionMethod):
    """Yin et al.'s pixel optimisation (see the module docstring); the run's generator is not used."""

    name = "deepinversion"

    def __init__(self, ctx: InversionContext) -> None:
        super().__init__(ctx)
        self.bn_stats.remove()  # DeepInversion matches each batch's own statistics: no momentum
        self.bn_stats = BNStatistics(ctx.teacher, momentum=0.0)
        self.pixels: torch.Tensor | None = None  # the leaf tensor of the last batch (for inspection)
        self.history: list[float] = []  # total loss of every step of the last batch

    def _initial_pixels(self) -> torch.Tensor:
        generator = self.ctx.generator
        shape = (self.ctx.cfg.synthesis_batch_size, generator.channels, *generator.image_size)
        return torch.randn(shape, device=self.ctx.device).requires_grad_(True)

    def loss(self, pixels: torch.Tensor, targets: torch.Tensor
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        """L of one step on a jittered/flipped view of ``pixels``: total, weighted terms, teacher logits."""
        ctx, cfg = self.ctx, self.ctx.cfg
        view = jitter_and_flip(pixels)
        with self.bn_stats.active():
            t_logits = ctx.teacher(view)
        terms = {"bn": cfg.bn_weight * self.bn_stats.loss().to(pixels.device),
                 "oh": cfg.oh_weight * one_hot_loss(t_logits, targets)}
        if cfg.di_tv_l1 > 0 or cfg.di_tv_l2 > 0:
            tv_l1, tv_l2 = total_variation(view)
            terms["tv"] = cfg.di_tv_l1 * tv_l1 + cfg.di_tv_l2 * tv_l2
        if cfg.di_l2 > 0:
            terms["l2"] = cfg.di_l2 * torch.linalg.vector_norm(view.flatten(1), dim=1).mean()
        if cfg.adv_weight > 0 and ctx.epoch >= cfg.warmup_epochs:
            with frozen(ctx.student):
                terms["adv"] = cfg.adv_weight * competition_loss(ctx.student(view), t_logits)
        if ctx.guidance is not None:
            terms["fa"] = cfg.fa_weight * ctx.guidance.generator_loss(pixels, t_logits.argmax(1).detach())
        return torch.stack(list(terms.values())).sum(), terms, t_logits

    def _clip(self, pixels: torch.Tensor) -> None:
        """Keep every pixel inside [0, 1] once un-normalised."""
        mean, std = self.ctx.generator.mean, self.ctx.generator.std
        with torch.no_grad():
            pixels.copy_(torch.max(torch.min(pixels, (1 - mean) / std), -mean / std))

    def synthesize(self) -> SyntheticBatch:
        pixels = self._initial_pixels()
        optimizer = torch.optim.Adam([pixels], lr=self.ctx.cfg.di_lr)  # fresh state per batch, as upstream
        targets = self.sample_targets()
        best, best_loss, best_logs = pixels.detach().clone(), math.inf, {}
        self.history = []
        for _ in range(self.ctx.cfg.g_steps):
            total, terms, _ = self.loss(pixels, targets)
            value = float(total.detach())
            self.history.append(value)
            logs = {k: float(v.detach()) for k, v in terms.items()} | {"g_loss": value}
            if value < best_loss:  # the images this loss was computed on, before the step moves them
                best, best_loss, best_logs = pixels.detach().clone(), value, logs
            optimizer.zero_grad(set_to_none=True)
            backward(total)
            optimizer.step()
            self._clip(pixels)
            best_logs = best_logs | self.after_generator_step()
        self.pixels = pixels
        return self.batch(best, targets, best_logs)

    def state_dict(self) -> dict[str, Any]:
        return super().state_dict()  # nothing outlives a batch: pixels and Adam state are fresh each time
