"""What the generative condensers share: the payload is a conditional generator, not images (d2m, gendd).

``GenerativeCondenser.synthesize`` runs, within ``condense.time_budget_s`` (0: no budget):

1. **adversarial pre-training** of a conditional GAN for ``gan_steps`` steps (at most ``gan_share`` of the
   time budget): the generator ``G(z, y)`` is an allow-listed architecture (``shared.models.generators``),
   the discriminator a small projection discriminator (no BatchNorm, so DP-SGD can clip per sample);
   non-saturating GAN loss, Adam (0.5, 0.999);
2. a **model pool**: ``pool_size`` snapshots of one ConvNet (``condense.model``) trained for ``pool_steps``
   SGD steps (the snapshots are spread over the run, from barely to briefly trained), plus a fresh random
   net on every draw with the same probability as each snapshot;
3. **refinement** for ``iterations`` steps (or until the budget ends): every step draws one pool member
   and updates G with the method's matching loss (``matching_loss``) between the class means of per-record
   statistics (``record_statistics``) of a real batch and of a generated batch of every held class;
4. G's BatchNorm statistics are re-estimated in train mode without gradients, so the eval-mode generator
   the server runs draws what was trained.

The returned ``Synthesis`` carries the generator; ``pack`` turns it into a ``GeneratorPayload``
(``shared/generator_payload.py``) with ``ipc`` images per held class drawn for the site's preview.
The DP variants (``dp_generative.py``) override ``disc_update``, ``real_means`` and ``pool_batch``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from client.condense.base import (
    Condenser,
    LocalData,
    PrivacyReport,
    Synthesis,
    TimeBudget,
    group_means,
    make_payload,
    matching_net,
    sample_real,
)
from shared.config.condense import CondenseConfig
from shared.data import normalize
from shared.generator_payload import make_generator_payload, sample
from shared.models.base import Classifier
from shared.models.generators import ConditionalGenerator, build_generator
from shared.payload import CondensedPayload
from shared.progress import progress_bar

POOL_BATCH = 128  # images per SGD step of the pool net
POOL_LR = 0.01
ADAM_BETAS = (0.5, 0.999)


class Discriminator(nn.Module):
    """Projection discriminator (Miyato & Koyama 2018): two strided convolutions, no normalisation layers."""

    def __init__(self, num_classes: int, channels: int, image_size: int, width: int = 32) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, width, 4, stride=2, padding=1), nn.LeakyReLU(0.2),
            nn.Conv2d(width, 2 * width, 4, stride=2, padding=1), nn.LeakyReLU(0.2), nn.Flatten(1),
        )
        features = 2 * width * (image_size // 4) ** 2
        self.out = nn.Linear(features, 1)
        self.embed = nn.Embedding(num_classes, features)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        h = self.body(x)
        return self.out(h).squeeze(1) + (self.embed(labels) * h).sum(dim=1)


@dataclass
class GanState:
    """Generator, discriminator and their optimisers."""

    gen: ConditionalGenerator
    disc: Discriminator
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer


@dataclass
class ModelPool:
    """Snapshots of a briefly trained net, and fresh random nets drawn on demand."""

    snapshots: list[Classifier]
    local: LocalData
    cfg: CondenseConfig
    draws: list[str] = field(default_factory=list)

    def draw(self, rng: random.Random) -> Classifier:
        """A snapshot, or (with the same probability as each snapshot; always when there is none) a fresh net."""
        pick = rng.randrange(len(self.snapshots) + 1)
        if pick == len(self.snapshots):
            self.draws.append("random")
            return matching_net(self.local, self.cfg).requires_grad_(False)
        self.draws.append(f"snapshot{pick}")
        return self.snapshots[pick]


class GenerativeCondenser(Condenser):
    """Template of ``d2m`` / ``gendd``; subclasses define the matching statistics and loss."""

    adversarial_refinement: ClassVar[bool] = False  # gendd keeps the GAN loss while refining

    def synthesize(self, local: LocalData, cfg: CondenseConfig, generator: torch.Generator,
                   progress: bool) -> Synthesis:
        state = gan_state(local, cfg)  # first: the first optimiser of a process imports torch._dynamo (seconds)
        budget = TimeBudget(cfg.time_budget_s, cfg.time_budget_clock)
        rng = random.Random(cfg.seed)
        self.begin(local, cfg)
        losses: list[float] = []
        self.pretrain(state, local, cfg, generator, budget, losses, progress)
        pool = self.build_pool(state.gen, local, cfg, generator, budget)
        steps = self.refine(state, pool, local, cfg, (generator, rng), budget, losses, progress)
        recalibrate(state.gen, local, generator)
        labels = torch.tensor(local.classes, dtype=torch.int64).repeat_interleave(cfg.ipc)
        pixels = sample(state.gen, labels, generator)
        return Synthesis(normalize(pixels, local.info), labels, steps, losses, self.report(), generator=state.gen)

    def pack(self, local: LocalData, cfg: CondenseConfig, result: Synthesis, seconds: float) -> CondensedPayload:
        images = make_payload(self.name, local, cfg, result, seconds)
        images.meta.init, images.meta.generator_classes = "generator", list(local.classes)
        extra = images.extra | {"gan_steps": self.gan_steps_done}
        return make_generator_payload(result.generator, images.meta, cfg.generator, extra)

    # --- phase 1: adversarial pre-training ---
    def pretrain(self, state: GanState, local: LocalData, cfg: CondenseConfig, generator: torch.Generator,
                 budget: TimeBudget, losses: list[float], progress: bool) -> None:
        gan_budget = TimeBudget(cfg.time_budget_s * cfg.gan_share, cfg.time_budget_clock)
        self.gan_steps_done = 0
        with progress_bar(cfg.gan_steps, f"{self.name} GAN pre-training", enabled=progress) as bar:
            for _ in range(cfg.gan_steps):
                if gan_budget.exhausted() or budget.exhausted():
                    break
                bar.advance(loss=self.gan_step(state, local, cfg, generator))
                self.gan_steps_done += 1

    def gan_step(self, state: GanState, local: LocalData, cfg: CondenseConfig, generator: torch.Generator) -> float:
        """One discriminator and one generator update; returns the generator's adversarial loss."""
        fake_labels = held_labels(local, cfg.batch_gen, generator)
        fake = normalize(state.gen.sample(fake_labels, generator), local.info)
        self.disc_update(state, local, cfg, generator, fake.detach(), fake_labels)
        loss = F.softplus(-state.disc(fake, fake_labels)).mean()
        state.opt_g.zero_grad(set_to_none=True)
        loss.backward()
        state.opt_g.step()
        return float(loss.detach())

    def disc_update(self, state: GanState, local: LocalData, cfg: CondenseConfig, generator: torch.Generator,
                    fake: torch.Tensor, fake_labels: torch.Tensor) -> None:
        index = torch.randint(len(local.labels), (cfg.batch_gen,), generator=generator).to(local.device)
        real = F.softplus(-state.disc(local.images[index], local.labels[index])).mean()
        loss = real + F.softplus(state.disc(fake, fake_labels)).mean()
        state.opt_d.zero_grad(set_to_none=True)
        loss.backward()
        state.opt_d.step()

    # --- phase 2: the model pool ---
    def build_pool(self, gen: ConditionalGenerator, local: LocalData, cfg: CondenseConfig,
                   generator: torch.Generator, budget: TimeBudget) -> ModelPool:
        """``pool_size`` snapshots spread over ``pool_steps`` SGD steps of one net (fewer if the budget ends)."""
        net = matching_net(local, cfg)
        optimizer = torch.optim.SGD(net.parameters(), lr=POOL_LR, momentum=0.9)
        marks = {max(1, round(cfg.pool_steps * (k + 1) / cfg.pool_size)) for k in range(cfg.pool_size)}
        snapshots: list[Classifier] = []
        for step in range(1, cfg.pool_steps + 1):
            if budget.exhausted():
                break
            x, y = self.pool_batch(gen, local, generator)
            loss = F.cross_entropy(net(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if step in marks:
                snapshots.append(frozen_copy(net, local, cfg))
        return ModelPool(snapshots, local, cfg)

    def pool_batch(self, gen: ConditionalGenerator, local: LocalData,
                   generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """A training batch of the pool net: real records (the DP variants use generated images)."""
        index = torch.randint(len(local.labels), (POOL_BATCH,), generator=generator).to(local.device)
        return local.images[index], local.labels[index]

    # --- phase 3: refinement ---
    def refine(self, state: GanState, pool: ModelPool, local: LocalData, cfg: CondenseConfig,
               rngs: tuple[torch.Generator, random.Random], budget: TimeBudget, losses: list[float],
               progress: bool) -> int:
        generator, rng = rngs
        state.disc.requires_grad_(False)  # frozen while refining (GenDD's distillation phase)
        done = 0
        with progress_bar(cfg.iterations, f"condense {self.name}", enabled=progress) as bar:
            for _ in range(cfg.iterations):
                if budget.exhausted():
                    break
                losses.append(self.refine_step(state, pool.draw(rng), local, cfg, generator))
                done += 1
                bar.advance(loss=losses[-1])
        return done

    def refine_step(self, state: GanState, net: Classifier, local: LocalData, cfg: CondenseConfig,
                    generator: torch.Generator) -> float:
        target = self.real_means(net, local, cfg, generator)
        labels = torch.tensor(local.classes, device=local.device).repeat_interleave(cfg.batch_syn)
        groups = torch.arange(local.num_groups, device=local.device).repeat_interleave(cfg.batch_syn)
        fake = normalize(state.gen.sample(labels, generator), local.info)
        syn = group_means(self.syn_statistics(net, fake, cfg), groups, local.num_groups)
        loss = self.matching_loss(target, syn, cfg)
        if self.adversarial_refinement:
            loss = F.softplus(-state.disc(fake, labels)).mean() + loss
        state.opt_g.zero_grad(set_to_none=True)
        loss.backward()
        state.opt_g.step()
        return float(loss.detach())

    def real_means(self, net: Classifier, local: LocalData, cfg: CondenseConfig,
                   generator: torch.Generator) -> torch.Tensor:
        """Per held class, the mean statistics of a random real batch (G x D)."""
        index = sample_real(local, cfg.batch_real, generator)
        with torch.no_grad():
            values = self.record_statistics(net, local.images[index], cfg)
        return group_means(values, local.group_of[index], local.num_groups)

    def syn_statistics(self, net: Classifier, x: torch.Tensor, cfg: CondenseConfig) -> torch.Tensor:
        return self.record_statistics(net, x, cfg)

    # --- what a method defines ---
    def record_statistics(self, net: Classifier, x: torch.Tensor, cfg: CondenseConfig) -> torch.Tensor:
        """One row of statistics per image (N x D)."""
        raise NotImplementedError

    def matching_loss(self, real: torch.Tensor, syn: torch.Tensor, cfg: CondenseConfig) -> torch.Tensor:
        """The refinement loss between the real and generated class means (G x D each)."""
        raise NotImplementedError

    # --- DP hooks ---
    def begin(self, local: LocalData, cfg: CondenseConfig) -> None:
        """Called once before pre-training."""

    def report(self) -> PrivacyReport | None:
        return None


def gan_state(local: LocalData, cfg: CondenseConfig) -> GanState:
    info = local.info
    gen = build_generator(cfg.generator, info.num_classes, info.channels, local.image_size[0],
                          latent_dim=cfg.latent_dim, width=cfg.generator_width).to(local.device)
    disc = Discriminator(info.num_classes, info.channels, local.image_size[0]).to(local.device)
    return GanState(gen, disc, torch.optim.Adam(gen.parameters(), lr=cfg.lr_generator, betas=ADAM_BETAS),
                    torch.optim.Adam(disc.parameters(), lr=cfg.lr_discriminator, betas=ADAM_BETAS))


def held_labels(local: LocalData, n: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` labels drawn uniformly from the held classes (public: the classes a site holds are in its payload)."""
    classes = torch.tensor(local.classes, dtype=torch.int64)
    return classes[torch.randint(len(classes), (n,), generator=generator)].to(local.device)


def frozen_copy(net: Classifier, local: LocalData, cfg: CondenseConfig) -> Classifier:
    copy = matching_net(local, cfg)
    copy.load_state_dict(net.state_dict())
    return copy.eval().requires_grad_(False)


def recalibrate(gen: ConditionalGenerator, local: LocalData, generator: torch.Generator, batches: int = 10,
                batch: int = 256) -> None:
    """Re-estimate G's BatchNorm running statistics (cumulative average over generated batches, no grad)."""
    norms = [m for m in gen.modules() if isinstance(m, nn.BatchNorm2d)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    gen.train()
    with torch.no_grad():
        for _ in range(batches):
            gen.sample(held_labels(local, batch, generator), generator)
    for m in norms:
        m.momentum = 0.1
    gen.eval()


def standardize(logits: torch.Tensor, tau: float) -> torch.Tensor:
    """Logit standardisation Z(x; tau) = (x - mean(x)) / std(x) * tau, per row."""
    mean = logits.mean(dim=1, keepdim=True)
    std = logits.std(dim=1, keepdim=True).clamp(min=1e-6)
    return (logits - mean) / std * tau


def class_kl(real: torch.Tensor, syn: torch.Tensor) -> torch.Tensor:
    """sum over classes of KL(real_c || syn_c) for rows of probabilities (real may carry DP noise: clamped)."""
    real = real.clamp(min=1e-8)
    real = real / real.sum(dim=1, keepdim=True)
    syn = syn.clamp(min=1e-8)
    return (real * (real.log() - syn.log())).sum()
