"""The ``Condenser`` interface, its registry and what every method shares.

A condenser turns a site's real images (``LabeledImages``) into a ``CondensedPayload`` holding at most
``ipc`` images for each class the site holds (a site never invents classes it has no data for). The
template ``Condenser.condense`` seeds, prepares the local data, runs the method's ``synthesize`` and
packs the result with its metadata; a method only implements ``synthesize``.

Randomness: the ``generator`` handed to ``synthesize`` is seeded with ``condense.seed`` (so non-DP runs
are reproducible) and drives only draws that a DP run may make public: the noise initialisation of the
synthetic images, DSA parameters, batches of the synthetic set. ``sample_real`` and a real-image
``init_synthetic`` select private records with it, which is why the DP methods never call either: they
sample with a Poisson mask and add noise from ``shared.privacy.secret_generator`` (OS entropy), and their
payload carries ``noise_source="os-entropy"`` and no seed.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from shared.augment.dsa import SiameseAugment
from shared.config.condense import CondenseConfig
from shared.data import LabeledImages
from shared.data.registry import DatasetInfo
from shared.device import seed_everything, select_device, torch_threads
from shared.errors import ConfigError, DataError
from shared.models import build_model
from shared.models.base import Classifier
from shared.payload import SECRET_NOISE_SOURCE, CondensedPayload, PayloadMeta
from shared.registry import Registry


@dataclass
class LocalData:
    """A site's real data prepared for matching: normalised images on the device, grouped by held class."""

    images: torch.Tensor  # float32 normalised, N x C x H x W
    labels: torch.Tensor  # int64 N (dataset class ids)
    info: DatasetInfo
    classes: list[int]  # held classes (count > 0), in increasing order; group k <-> classes[k]
    members: list[torch.Tensor]  # indices of each held class's records
    group_of: torch.Tensor  # int64 N: the group index of every record
    counts: list[int]  # local count of every dataset class (0 for classes not held)
    device: torch.device

    @property
    def num_groups(self) -> int:
        return len(self.classes)

    @property
    def image_size(self) -> tuple[int, int]:
        return (int(self.images.shape[-2]), int(self.images.shape[-1]))


@dataclass
class PrivacyReport:
    """How the noisy releases were accounted (filled by the DP methods)."""

    epsilon: float
    delta: float
    accountant: str
    noise_multiplier: float
    sample_rate: float
    steps: int
    clip: float


@dataclass
class Synthesis:
    """What a method returns: normalised synthetic images, their dataset class labels and diagnostics."""

    images: torch.Tensor
    labels: torch.Tensor
    iterations: int
    losses: list[float] = field(default_factory=list)
    privacy: PrivacyReport | None = None
    generator: torch.nn.Module | None = None  # generative methods: the trained conditional generator (the payload)


class Condenser(ABC):
    """One condensation method; registered in ``condensers`` under ``name``."""

    name: ClassVar[str]
    default_lr_img: ClassVar[float] = 1.0  # used when condense.lr_img is 0

    def lr_img(self, cfg: CondenseConfig) -> float:
        return cfg.lr_img or self.default_lr_img

    def condense(self, data: LabeledImages, cfg: CondenseConfig, progress: bool = True,
                 device: torch.device | str | None = None) -> CondensedPayload:
        """Condense ``data`` into at most ``cfg.ipc`` images per held class; see the module docstring."""
        cfg.validate()
        if cfg.method != self.name:
            raise ConfigError(f"condense.method={cfg.method!r} but this condenser is {self.name!r}; use get_condenser")
        seed_everything(cfg.seed)
        generator = torch.Generator().manual_seed(cfg.seed)
        local = prepare_local(data, select_device(str(device)) if device else select_device("auto"))
        start = time.perf_counter()
        with torch_threads(cfg.threads or None):
            result = self.synthesize(local, cfg, generator, progress)
        return self.pack(local, cfg, result, time.perf_counter() - start)

    def pack(self, local: LocalData, cfg: CondenseConfig, result: Synthesis, seconds: float) -> CondensedPayload:
        """The payload of ``result`` (images + metadata; generative methods send their generator instead)."""
        return make_payload(self.name, local, cfg, result, seconds)

    @abstractmethod
    def synthesize(self, local: LocalData, cfg: CondenseConfig, generator: torch.Generator,
                   progress: bool) -> Synthesis:
        """Produce the synthetic set (normalised images) for ``local``."""

    def planned_releases(self, cfg: CondenseConfig) -> int:
        """Noisy releases a full run makes (what ``plan_privacy`` calibrates for); 0 for non-DP methods. A run
        stopped by ``condense.time_budget_s`` makes fewer, so the plan bounds what a run can spend."""
        return 0


condensers: Registry[type[Condenser]] = Registry("condensation method")


def get_condenser(name: str) -> Condenser:
    return condensers.get(name)()


def condenser_names() -> list[str]:
    return condensers.names()


def condense(data: LabeledImages, cfg: CondenseConfig, progress: bool = True,
             device: torch.device | str | None = None) -> CondensedPayload:
    """Run the method ``cfg.method`` on ``data``."""
    return get_condenser(cfg.method).condense(data, cfg, progress=progress, device=device)


def prepare_local(data: LabeledImages, device: torch.device) -> LocalData:
    if len(data) == 0:
        raise DataError("the site holds no images; condensation needs at least one labelled image")
    labels = data.labels.clone()
    num_classes = data.info.num_classes
    if int(labels.min()) < 0 or int(labels.max()) >= num_classes:
        raise DataError(f"labels must lie in 0..{num_classes - 1} for dataset {data.info.name!r}")
    counts = torch.bincount(labels, minlength=num_classes).tolist()
    classes = [c for c, n in enumerate(counts) if n > 0]
    lookup = torch.full((num_classes,), -1, dtype=torch.int64)
    lookup[classes] = torch.arange(len(classes))
    members = [torch.nonzero(labels == c).flatten() for c in classes]
    return LocalData(data.normalized(device), labels.to(device), data.info, classes, members,
                     lookup[labels].to(device), counts, device)


def synthetic_counts(local: LocalData, ipc: int) -> list[int]:
    """Images per held class: ``ipc``, or fewer when the site holds fewer real ones."""
    return [min(ipc, local.counts[c]) for c in local.classes]


def synthetic_groups(local: LocalData, ipc: int) -> torch.Tensor:
    counts = synthetic_counts(local, ipc)
    return torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts)).to(local.device)


def init_synthetic(local: LocalData, cfg: CondenseConfig,
                   generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Initial synthetic images (normalised) and their group ids: random real images or Gaussian noise.

    A real init picks private records with the seeded ``generator`` and would publish them, so it is refused
    for DP methods (``CondenseConfig.validate`` refuses it too); the noise init touches no private data."""
    groups = synthetic_groups(local, cfg.ipc)
    if cfg.resolved_init == "real":
        if cfg.private:
            raise ConfigError(f"condense.method={cfg.method} cannot start from real images: they would be published")
        picks = [m[torch.randperm(len(m), generator=generator)[:n]] for m, n in
                 zip(local.members, synthetic_counts(local, cfg.ipc), strict=True)]
        images = local.images[torch.cat(picks).to(local.device)].clone()
    else:
        images = torch.randn((len(groups), *local.images.shape[1:]), generator=generator).to(local.device)
    return clamp_to_pixels(images, local.info), groups


@dataclass
class Learnable:
    """The synthetic images a matching method optimises, with what it builds around them."""

    images: torch.Tensor  # normalised, requires grad
    groups: torch.Tensor  # group id of every image
    labels: torch.Tensor  # dataset class of every image
    optimizer: torch.optim.Optimizer
    augment: SiameseAugment | None  # the same DSA draw for real and synthetic batches, when enabled


def learnable(local: LocalData, cfg: CondenseConfig, generator: torch.Generator, lr_img: float) -> Learnable:
    syn, groups = init_synthetic(local, cfg, generator)
    syn.requires_grad_(True)
    labels = torch.tensor(local.classes, device=groups.device)[groups]
    optimizer = torch.optim.SGD([syn], lr=lr_img, momentum=cfg.momentum)
    augment = SiameseAugment(cfg.dsa_strategy, generator=generator) if cfg.dsa else None
    return Learnable(syn, groups, labels, optimizer, augment)


def pixel_bounds(info: DatasetInfo, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised values of pixel 0 and pixel 1 per channel (broadcastable to N x C x H x W)."""
    mean = torch.tensor(info.mean, dtype=like.dtype, device=like.device).view(1, -1, 1, 1)
    std = torch.tensor(info.std, dtype=like.dtype, device=like.device).view(1, -1, 1, 1)
    return (0.0 - mean) / std, (1.0 - mean) / std


def clamp_to_pixels(images: torch.Tensor, info: DatasetInfo) -> torch.Tensor:
    """Project normalised images back into the range of valid pixels, so what is optimised is what is sent."""
    low, high = pixel_bounds(info, images)
    return torch.max(torch.min(images, high), low)


def matching_net(local: LocalData, cfg: CondenseConfig) -> Classifier:
    """A freshly (randomly) initialised network of the configured architecture, on the device."""
    net = build_model(cfg.model, num_classes=local.info.num_classes, in_channels=local.info.channels,
                      image_size=local.image_size, width=cfg.model_width, depth=cfg.model_depth)
    return net.to(local.device)


def sample_real(local: LocalData, batch: int, generator: torch.Generator) -> torch.Tensor:
    """Indices of up to ``batch`` random records of every held class (without replacement), concatenated.

    Non-DP methods only: the choice follows the seeded ``generator``; DP methods Poisson-sample instead."""
    picks = [m[torch.randperm(len(m), generator=generator)[:batch]] for m in local.members]
    return torch.cat(picks).to(local.device)


def group_means(values: torch.Tensor, groups: torch.Tensor, num_groups: int) -> torch.Tensor:
    """Mean of the rows of ``values`` in each group (N x D -> G x D); empty groups give zeros."""
    sums = torch.zeros(num_groups, values.shape[1], dtype=values.dtype, device=values.device)
    sums = sums.index_add(0, groups, values)
    counts = torch.bincount(groups, minlength=num_groups).clamp(min=1).to(values.dtype)
    return sums / counts.unsqueeze(1)


class TimeBudget:
    """``exhausted()`` once ``seconds`` have passed (never when ``seconds`` is 0): wall-clock seconds, or with
    ``clock="process"`` this process's CPU seconds (what a method gets on a machine shared with other jobs)."""

    def __init__(self, seconds: float, clock: str = "wall") -> None:
        self.seconds = seconds
        self.now = time.process_time if clock == "process" else time.perf_counter
        self.start = self.now()

    def exhausted(self) -> bool:
        return self.seconds > 0 and self.now() - self.start >= self.seconds


def make_payload(method: str, local: LocalData, cfg: CondenseConfig, result: Synthesis,
                 seconds: float) -> CondensedPayload:
    """Pixel-space float32 images + metadata; images are clamped to [0, 1] (they already are, up to rounding)."""
    from shared.data import denormalize

    info = local.info
    pixels = denormalize(result.images.detach().float().cpu(), info).clamp(0.0, 1.0).contiguous()
    privacy = result.privacy
    meta = PayloadMeta(
        method=method, dataset=info.name, ipc=cfg.ipc, num_classes=info.num_classes, channels=info.channels,
        height=info.image_size[0], width=info.image_size[1], mean=list(info.mean), std=list(info.std),
        local_class_counts=list(local.counts),
        # DP: the noise never came from the seed; record its source instead (the seed only fixes public draws)
        seed=None if privacy else cfg.seed, noise_source=SECRET_NOISE_SOURCE if privacy else None,
        iterations=result.iterations,
        wall_time_s=round(seconds, 3), wire_dtype=cfg.wire_dtype, init=cfg.resolved_init,
        epsilon=privacy.epsilon if privacy else None, delta=privacy.delta if privacy else None,
        accountant=privacy.accountant if privacy else None,
        noise_multiplier=privacy.noise_multiplier if privacy else None,
        sample_rate=privacy.sample_rate if privacy else None, dp_steps=privacy.steps if privacy else None,
        clip=privacy.clip if privacy else None, class_names=list(info.class_names) or None,
    )
    return CondensedPayload(pixels, result.labels.detach().cpu().long(), meta, extra={"losses": result.losses})
