"""Server engine settings: inversion, feature alignment, KD, pool, run management. (Owned by server/.)

One knob per field; ``validate()`` raises ``ConfigError`` naming ``distill.<field>``. Names of pluggable
parts (base method, KD loss, sampler, replay) are checked against their registries when the engine is
built (the registries live in ``server/`` and are not imported here to keep the config light)."""

from __future__ import annotations

from dataclasses import dataclass

from shared.config.checks import check_types
from shared.errors import ConfigError

MODES = ("cs-only", "mi", "mi+cs", "mi*")
POOL_POLICIES = ("reservoir", "oldest")
STUDENT_OPTIMIZERS = ("sgd", "adam")
LR_SCHEDULES = ("cosine", "constant")
KD_AUGMENTS = ("none", "crop", "crop_flip")
SYNTHESIS_AUGMENTS = ("none", "crop", "crop_flip")
FAST_META = ("fomaml", "reptile")


@dataclass
class DistillConfig:
    # What to distil and how (the paper's comparison: cs-only, mi, mi+cs, mi* = guided).
    student: str = "lenet5_half"
    base: str = "fast"  # inversion method: fast | cmi | generative-deepinversion | deepinversion (Yin et al.)
    mode: str = "mi*"
    # Budget: stop after `epochs` (0 = no limit) or `budget_seconds` of training time (0 = no limit).
    epochs: int = 200
    budget_seconds: float = 0.0
    # Generator and synthesis.
    latent_dim: int = 256
    generator_width: int = 16
    conditional_generator: bool = True  # code z + embed(y): learns class -> image once (cheap on CPU)
    noisy_groups: int = 25  # NAYER noisy layers: random code maps per batch, this many groups per batch (0 = off)
    noisy_on: str = "code"  # code: map z + e_y (NAYER); latent: map z, then add e_y
    generator_conditioning: str = "add"  # add: z + e_y; mul: GDFQ's z * e_y (measured far slower, docs/engine.md)
    synthesis_batch_size: int = 256  # Fast-Datafree's
    g_steps: int = 2  # generator (or fast-generator) steps per synthesised batch
    lr_generator: float = 5e-3
    lr_latent: float = 0.015  # fast: learning rate of the per-batch latent codes (Fast-Datafree, g_steps 2)
    warmup_epochs: int = 20  # adversarial term off during warm-up (Fast-Datafree: 20)
    kd_in_warmup: bool = False  # Fast-Datafree: warm-up epochs only synthesise (the pool fills before KD)
    bn_weight: float = 10.0  # Fast-Datafree's bn, oh and adv (its WRN setting)
    bn_momentum: float = 0.9  # Fast-Datafree bn_mmt: BN statistics averaged with earlier batches (0 = off)
    synthesis_augment: str = "crop_flip"  # the teacher judges a random crop/flip of each synthetic image
    fast_meta: str = "fomaml"  # base=fast meta update: first-order MAML (upstream default) or Reptile
    fast_reset_l0: int = 120  # base=fast: re-initialise the generator's first layer this many epochs after warm-up
    oh_weight: float = 0.5
    adv_weight: float = 1.1
    # base=deepinversion (Yin et al.: pixels optimised for g_steps Adam steps; upstream CIFAR-10 values).
    di_lr: float = 0.1  # Adam learning rate of the pixels (upstream CIFAR-10 0.05 / 0.1; docs/engine.md)
    di_tv_l1: float = 0.0  # weight of the total-variation L1 prior
    di_tv_l2: float = 2.5e-5  # weight of the total-variation L2 prior (upstream di_var_scale)
    di_l2: float = 0.0  # weight of the per-image L2-norm prior
    # Condensed-guided feature alignment (used in mode mi*).
    fa_weight: float = 5.0
    lr_discriminator: float = 2e-3
    discriminator_hidden: int = 64
    condensed_batch_size: int = 32  # condensed samples per discriminator step
    diffaugment: str = "color,translation,cutout"
    # Knowledge distillation.
    kd_loss: str = "kl"
    temperature: float = 20.0  # Fast-Datafree's T
    kd_batch_size: int = 256
    kd_steps: int = 100  # KD steps after each synthesised batch (Fast-Datafree: 400; measured: docs/engine.md)
    kd_augment: str = "crop_flip"  # augment KD batches, teacher re-labels each view (none: reuse cached logits)
    # 0: a fresh kd_augment view per KD step, labelled by the teacher then (Fast-Datafree). K >= 1: each sample
    # enters the pool as itself + K-1 fixed views, labelled once, so a KD step needs no teacher forward.
    kd_views: int = 0
    condensed_share: float = 0.0  # share of every KD batch drawn from the condensed samples (0 = uniform union)
    student_optimizer: str = "sgd"  # momentum 0.9, Nesterov
    lr_student: float = 0.1
    weight_decay: float = 1e-4
    lr_schedule: str = "cosine"
    # Pool of KD samples (condensed + synthetic), in memory.
    replay: str = "pool"
    pool_cap: int = 20000
    pool_policy: str = "reservoir"
    sampler: str = "uniform"
    # Stop synthesising after this many synthetic samples (0 = never) and spend the rest of the budget on
    # KD from the pool: SSD-KD's small-scale setting, where the sampler decides which few samples to use.
    synthetic_budget: int = 0
    # Add only every k-th synthetic batch to the pool (1 = all): the generator keeps training every epoch,
    # but KD sees 1/k of the synthetic samples, spread over the whole run.
    pool_every: int = 1
    # Run management.
    num_threads: int = 0  # torch intra-op threads (0 = torch default)
    eval_every_seconds: float = 30.0
    eval_samples: int = 10000  # test images used for the periodic accuracy (final eval uses all)
    checkpoint_every: int = 50  # epochs between resumable checkpoints (0 = only at the end)
    # ... and at most this many seconds of training between them (0 = by epochs only): what a kill -9 can cost
    checkpoint_every_seconds: float = 60.0
    grid_every: int = 100  # epochs between PNG grids of synthetic vs condensed images (0 = only at the end)
    # Engine breadth (issue 6; docs/engine-breadth.md). base=cmi: contrastive model inversion.
    cmi_weight: float = 0.5  # weight of the InfoNCE term in the generator loss
    cmi_bank_size: int = 40960  # memory bank of earlier embeddings, FIFO (CMI's bank_size)
    cmi_negatives: int = 4096  # bank embeddings drawn as InfoNCE negatives per generator step (CMI's n_neg)
    cmi_temperature: float = 0.1  # InfoNCE temperature
    cmi_head_dim: int = 128  # output size of the MLP head over per-BN-layer instance means
    cmi_reset_generator: bool = False  # re-initialise the generator every batch (Fang et al.; needs many g_steps)
    # replay=generative (PRE-DFKD-style VAE memory instead of a growing pool).
    vae_latent_dim: int = 32
    vae_width: int = 16
    vae_steps: int = 2  # VAE steps per synthetic batch (on the new batch + as many of its own replays)
    vae_lr: float = 1e-3
    vae_replay_fraction: float = 0.5  # share of the synthetic part of a KD batch decoded by the VAE
    # sampler=ssd (SSD-KD-style modulating function + priority sampling).
    ssd_difficulty_power: float = 1.0  # class weight ~ difficulty^p (teacher-student KD loss)
    ssd_diversity_power: float = 1.0  # class weight ~ (1 / diversity)^p (spread of teacher logits)
    ssd_priority_power: float = 0.6  # within a class, P(sample) ~ (its last KD loss)^p
    ssd_uniform_mix: float = 0.1  # share of uniform class weight mixed in, so no class starves

    def validate(self) -> None:
        check_types(self, "distill")
        _choice("mode", self.mode, MODES)
        _choice("pool_policy", self.pool_policy, POOL_POLICIES)
        _choice("student_optimizer", self.student_optimizer, STUDENT_OPTIMIZERS)
        _choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        _choice("kd_augment", self.kd_augment, KD_AUGMENTS)
        _choice("synthesis_augment", self.synthesis_augment, SYNTHESIS_AUGMENTS)
        _choice("fast_meta", self.fast_meta, FAST_META)
        _choice("generator_conditioning", self.generator_conditioning, ("add", "mul"))
        _choice("noisy_on", self.noisy_on, ("code", "latent"))
        for name in ("student", "base", "kd_loss", "replay", "sampler"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ConfigError(f"distill.{name} must be a non-empty name")
        for name in ("latent_dim", "generator_width", "synthesis_batch_size", "g_steps", "discriminator_hidden",
                     "condensed_batch_size", "kd_batch_size", "kd_steps", "pool_cap", "eval_samples", "pool_every"):
            _at_least(name, getattr(self, name), 1)
        for name in ("epochs", "warmup_epochs", "checkpoint_every", "grid_every", "num_threads", "synthetic_budget",
                     "fast_reset_l0", "noisy_groups", "kd_views"):
            _at_least(name, getattr(self, name), 0)
        for name in ("lr_generator", "lr_latent", "lr_discriminator", "lr_student", "temperature", "di_lr"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"distill.{name}={getattr(self, name)!r} must be > 0")
        for name in ("bn_weight", "oh_weight", "adv_weight", "fa_weight", "weight_decay", "budget_seconds",
                     "di_tv_l1", "di_tv_l2", "di_l2",
                     "eval_every_seconds", "checkpoint_every_seconds"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"distill.{name}={getattr(self, name)!r} must be >= 0")
        if self.epochs == 0 and self.budget_seconds == 0:
            raise ConfigError("distill.epochs and distill.budget_seconds are both 0 (no limit); set one of them")
        for name in ("cmi_bank_size", "cmi_negatives", "cmi_head_dim", "vae_latent_dim", "vae_width", "vae_steps"):
            _at_least(name, getattr(self, name), 1)
        for name, low, high in (("cmi_weight", 0, None), ("cmi_temperature", None, None), ("vae_lr", None, None),
                                ("vae_replay_fraction", 0, 1), ("bn_momentum", 0, 0.999),
                                ("condensed_share", 0, 1), ("ssd_difficulty_power", 0, None),
                                ("ssd_diversity_power", 0, None), ("ssd_priority_power", 0, None),
                                ("ssd_uniform_mix", 0, 1)):
            value = getattr(self, name)
            if not (value >= low if low is not None else value > 0) or (high is not None and value > high):
                bounds = f">= {low}" if low is not None else "> 0"
                raise ConfigError(f"distill.{name}={value!r} must be {bounds}" + (f" and <= {high}" if high else ""))
        for name in ("cmi_reset_generator", "kd_in_warmup", "conditional_generator"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"distill.{name}={getattr(self, name)!r} must be true or false")
        if not isinstance(self.cmi_reset_generator, bool):
            raise ConfigError(f"distill.cmi_reset_generator={self.cmi_reset_generator!r} must be true or false")
        if self.kd_views > 1 and self.kd_augment == "none":
            raise ConfigError(f"distill.kd_views={self.kd_views} needs augmented views; set "
                              "distill.kd_augment=crop_flip (or crop), or distill.kd_views=0")
        if self.mode == "mi*" and self.fa_weight == 0:
            raise ConfigError("distill.fa_weight=0 turns mode mi* into mi+cs; use mode=mi+cs or a positive weight")
        from shared.augment.diffaugment import parse_policy

        try:
            parse_policy(self.diffaugment)
        except ConfigError as exc:
            raise ConfigError(f"distill.diffaugment: {exc}") from None

    @property
    def synthesizes(self) -> bool:
        return self.mode != "cs-only"

    @property
    def guided(self) -> bool:
        return self.mode == "mi*"

    @property
    def uses_condensed(self) -> bool:
        return self.mode != "mi"


def _choice(name: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"distill.{name}={value!r} must be one of {', '.join(allowed)}")


def _at_least(name: str, value: object, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"distill.{name}={value!r} must be an integer >= {minimum}")
