"""Client-side condensation settings: which method, how many samples per class, optimisation and privacy knobs.

Defaults are the generic ones; ``configs/setting/fmnist_cpu.yaml`` sets the FMNIST-CPU values. ``validate``
checks every field and the combinations that make no sense (e.g. ``real`` with a privacy budget)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from shared.config.checks import check_types
from shared.errors import ConfigError

# The condensers a site can run (client/condense registers one module each; tests/test_condense.py checks the
# registry against this list, so the config never imports client code).
METHODS = ("d2m", "dm", "dp-d2m", "dp-dm", "dp-dos", "dp-gendd", "dp-gm", "gendd", "gm", "real")
# The methods whose payload is a conditional generator (shared/generator_payload.py), not images.
GENERATIVE_METHODS = ("d2m", "dp-d2m", "dp-gendd", "gendd")
WIRE_DTYPES = ("uint8", "float16")
BUDGET_CLOCKS = ("wall", "process")
INITS = ("auto", "real", "noise")
CLASS_COMPOSITIONS = ("parallel", "sequential")


@dataclass
class CondenseConfig:
    method: str = "dm"  # dm | gm | real | dp-dm | dp-gm (registry in client/condense)
    ipc: int = 10  # synthetic images per class the client holds (at most its real count of that class)
    iterations: int = 1000  # outer iterations (dm: one random embedding net each; gm: one matching net each)
    lr_img: float = 0.0  # SGD step on the pixels (normalised space); 0 = the method's default (dm 1, gm 0.1, ...)
    momentum: float = 0.5
    batch_real: int = 256  # real images per class per iteration (DP: expected size under Poisson sampling)
    init: str = "auto"  # auto | real | noise; auto = real, or noise for DP methods (a real init would leak images)
    dsa: bool = True  # differentiable siamese augmentation on real and synthetic batches
    dsa_strategy: str = "color_crop_cutout_flip_scale_rotate"
    model: str = "convnet3"  # embedding / matching network (shared.models)
    model_width: int = 128
    model_depth: int = 3
    # gradient matching only
    outer_loop: int = 0  # image updates per matching net; 0 = the DC/DSA schedule for the IPC (1/10/50)
    inner_loop: int = 0  # net updates on the synthetic set between image updates; 0 = the DC/DSA schedule
    lr_net: float = 0.01
    batch_train: int = 256
    # generative methods (d2m, gendd, dp-d2m, dp-gendd): the payload is a conditional generator; ``iterations``
    # counts refinement (matching) steps after ``gan_steps`` adversarial pre-training steps
    generator: str = "cgan-dcgan"  # allow-listed architecture (shared/models/generators.py)
    latent_dim: int = 32
    generator_width: int = 32
    lr_generator: float = 2e-4  # Adam (0.5, 0.999), the DCGAN values
    lr_discriminator: float = 2e-4
    gan_steps: int = 2000  # adversarial pre-training steps of the conditional GAN
    gan_share: float = 0.5  # with time_budget_s: the share of it pre-training may use (the rest refines)
    batch_gen: int = 64  # images per GAN step (real and generated)
    batch_syn: int = 16  # generated images per class per refinement step
    pool_size: int = 4  # snapshots of one briefly trained net in the model pool (fresh random nets besides)
    pool_steps: int = 40  # SGD steps (batch 128) of that net; snapshots spread over them
    skd_weight: float = 0.01  # gendd: lambda_SKD (the paper's FMNIST/CIFAR-10 value; 0.001 for MNIST)
    skd_tau: float = 2.0  # gendd: logit standardisation Z(x; tau) = (x - mean) / std * tau
    pm_weight: float = 10.0  # d2m: lambda of the prediction matching term
    pm_temperature: float = 4.0  # d2m: softmax temperature T of prediction matching
    attention_power: int = 4  # d2m: attention map sum_c |f_c|^p (DataDAM's p)
    # differential privacy (dp-dm, dp-gm)
    # (0 means "unset" for the three below: TOML and Flower run configs have no null)
    epsilon: float = 0.0  # > 0: target epsilon; the noise multiplier is calibrated to reach it
    delta: float = 1e-5
    clip: float = 1.0  # L2 bound on each real sample's contribution (embedding or gradient)
    noise_multiplier: float = 0.0  # > 0: fixed noise instead of calibrating to epsilon (epsilon is then reported)
    sample_rate: float = 0.0  # Poisson rate per real record; 0 = batch_real records per held class on average
    # (dp-dos: 0 = every record in every release)
    dos_releases: int = 20  # dp-dos: noisy signals released before optimising (client/condense/dp_dos.py)
    accountant: str = "rdp"  # shared.privacy accountants
    class_composition: str = "parallel"  # parallel: classes are disjoint; sequential: charge every class
    # output and resources
    wire_dtype: str = "uint8"  # uint8 | float16 image encoding on the wire
    time_budget_s: float = 0.0  # > 0: stop iterating after this many seconds (DP reports the steps taken)
    time_budget_clock: str = "wall"  # wall | process: time_budget_s counts this process's CPU seconds
    threads: int = 0  # torch CPU threads while condensing; 0 keeps the current setting
    seed: int = 0

    def validate(self) -> None:
        check_types(self, "condense")
        self._check_ranges()
        self._check_choices()
        self._check_privacy()

    def _check_ranges(self) -> None:
        positive_ints = ("ipc", "iterations", "batch_real", "model_width", "model_depth", "batch_train", "latent_dim",
                         "generator_width", "batch_gen", "batch_syn", "attention_power", "dos_releases")
        for name in positive_ints:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"condense.{name}={value!r} must be an integer >= 1")
        for name in ("outer_loop", "inner_loop"):
            if getattr(self, name) < 0:
                raise ConfigError(f"condense.{name}={getattr(self, name)} must be >= 0 (0 = DC/DSA schedule)")
        if not (math.isfinite(self.lr_img) and self.lr_img >= 0):
            raise ConfigError(f"condense.lr_img={self.lr_img!r} must be a finite number >= 0 (0 = method default)")
        for name in ("lr_net", "clip"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"condense.{name}={value!r} must be a finite number > 0")
        self._check_generative_ranges()
        if not 0.0 <= self.momentum < 1.0:
            raise ConfigError(f"condense.momentum={self.momentum} must be in [0, 1)")
        if self.threads < 0:
            raise ConfigError(f"condense.threads={self.threads} must be >= 0 (0 = keep torch's setting)")
        if self.time_budget_s < 0:
            raise ConfigError(f"condense.time_budget_s={self.time_budget_s} must be >= 0 (0 = no budget)")

    def _check_generative_ranges(self) -> None:
        for name in ("gan_steps", "pool_size", "pool_steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"condense.{name}={value!r} must be an integer >= 0")
        for name in ("lr_generator", "lr_discriminator", "skd_tau", "pm_temperature"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"condense.{name}={value!r} must be a finite number > 0")
        for name in ("skd_weight", "pm_weight"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"condense.{name}={value!r} must be a finite number >= 0")
        if not 0.0 <= self.gan_share <= 1.0:
            raise ConfigError(f"condense.gan_share={self.gan_share!r} must be in [0, 1]")

    @property
    def generative(self) -> bool:
        """The payload is a conditional generator (d2m, gendd and their DP variants)."""
        return self.method in GENERATIVE_METHODS

    def _check_choices(self) -> None:
        from shared.augment.dsa import check_strategy
        from shared.privacy import accountant_names

        if self.method not in METHODS:
            known = ", ".join(METHODS)
            raise ConfigError(f"condense.method={self.method!r} is unknown; choose one of {known}")
        if self.time_budget_clock not in BUDGET_CLOCKS:
            raise ConfigError(f"condense.time_budget_clock={self.time_budget_clock!r} must be one of "
                              f"{', '.join(BUDGET_CLOCKS)}")
        if self.init not in INITS:
            raise ConfigError(f"condense.init={self.init!r} must be one of {', '.join(INITS)}")
        if self.wire_dtype not in WIRE_DTYPES:
            raise ConfigError(f"condense.wire_dtype={self.wire_dtype!r} must be one of {', '.join(WIRE_DTYPES)}")
        if self.accountant not in accountant_names():
            raise ConfigError(f"condense.accountant={self.accountant!r} must be one of {', '.join(accountant_names())}")
        if self.class_composition not in CLASS_COMPOSITIONS:
            raise ConfigError(
                f"condense.class_composition={self.class_composition!r} must be one of {', '.join(CLASS_COMPOSITIONS)}"
            )
        check_strategy(self.dsa_strategy, field="condense.dsa_strategy")
        if self.generative:
            from shared.models.generators import generators

            if self.generator not in generators:
                raise ConfigError(f"condense.generator={self.generator!r} is not an allowed generator; choose one of "
                                  f"{', '.join(generators.names())}")

    @property
    def private(self) -> bool:
        return self.method.startswith("dp-")

    @property
    def resolved_init(self) -> str:
        if self.init == "auto":
            return "noise" if self.private else "real"
        return self.init

    def _check_privacy(self) -> None:
        for name in ("epsilon", "noise_multiplier"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"condense.{name}={value!r} must be a finite number >= 0 (0 = unset)")
        asks_dp = self.epsilon > 0 or self.noise_multiplier > 0
        if self.method == "real" and asks_dp:
            raise ConfigError(
                "condense.method=real sends real images and cannot be differentially private; "
                "unset condense.epsilon/noise_multiplier or use condense.method=dp-dm or dp-gm"
            )
        if asks_dp and not self.private:
            raise ConfigError(
                f"condense.epsilon/noise_multiplier is set but condense.method={self.method!r} adds no noise; "
                f"use condense.method=dp-{self.method} (or unset the privacy budget)"
            )
        if not self.private:
            return
        if not asks_dp:
            raise ConfigError(f"condense.method={self.method} needs condense.epsilon (or condense.noise_multiplier)")
        if not 0.0 < self.delta < 1.0:
            raise ConfigError(f"condense.delta={self.delta} must be in (0, 1)")
        if not 0.0 <= self.sample_rate <= 1.0:
            raise ConfigError(f"condense.sample_rate={self.sample_rate} must be in (0, 1] (0 = automatic)")
        if self.init == "real":
            raise ConfigError(
                f"condense.init={self.init!r} with condense.method={self.method}: initialising from real images "
                "would publish them; set condense.init=noise (or auto)"
            )
