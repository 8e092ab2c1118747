"""Algorithm 1 of the paper: expand the condensed set by (guided) model inversion and distil a student.

    pool <- condensed samples                      (modes cs-only, mi+cs, mi*; empty for mi)
    for each epoch:
        x_new <- invert_model(T, S, G, D, pool)    (not in cs-only; guided by D in mi*)
        pool <- pool U x_new
        repeat kd_steps: (x, y) ~ pool; step on KL(T(x) || S(x))

``Distiller`` runs it with run management (``server/run.py``): a wall-time or epoch budget, periodic
evaluation, JSONL metrics, resumable checkpoints and PNG grids. The engine's input is a plain
``CondensedSet`` (normalised images + labels); ``load_condensed`` builds one from payload files."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from server.distillation import kd_logit_std, replay_generative, sampling_ssd  # noqa: F401  (register options)
from server.distillation.kd_losses import get_kd_loss
from server.distillation.plots import plot_run
from server.distillation.pool import Replay, check_views, replays
from server.inversion import FeatureAlignment, Generator, InversionContext, InversionMethod, build_method
from server.inversion.base import SyntheticBatch
from server.inversion.generator import to_pixels
from server.inversion.quality import label_statistics, manifold_metrics
from server.run import (
    ComputeProfiler,
    PhaseTimer,
    RunDir,
    backward,
    peak_memory_mb,
    profiling,
    rng_state,
    set_rng_state,
    tensors_sha256,
)
from shared.checkpoint import ModelCard, save_checkpoint
from shared.config.distill import DistillConfig
from shared.data import LabeledImages, denormalize, normalize
from shared.device import seed_everything
from shared.errors import CheckpointError, CondexError, ConfigError, PayloadError
from shared.models import build_model
from shared.progress import progress_bar
from shared.train import augment_batch, evaluate
from shared.viz import save_class_grid, save_comparison_grid

if TYPE_CHECKING:
    from collections.abc import Mapping

    from shared.payload import CondensedPayload

# Config fields that may change between a run and its resumption (budgets and logging cadence only).
RESUMABLE_CHANGES = {"epochs", "budget_seconds", "eval_every_seconds", "eval_samples", "checkpoint_every",
                     "checkpoint_every_seconds",
                     "grid_every", "num_threads"}


@dataclass
class CondensedSet:
    """Condensed (or few real) samples in the teacher's normalised space."""

    images: torch.Tensor  # float32 N x C x H x W, normalised
    labels: torch.Tensor  # int64 N
    sources: list[str] = field(default_factory=list)  # payload files (provenance)
    epsilon: float | None = None  # largest DP epsilon among the payloads (None: not DP)

    def __post_init__(self) -> None:
        if self.images.dtype != torch.float32 or self.images.ndim != 4:
            raise PayloadError(f"condensed images must be float32 N x C x H x W, got {self.images.dtype} "
                               f"{tuple(self.images.shape)}")
        if self.labels.shape != (self.images.shape[0],):
            raise PayloadError(f"condensed labels must have shape ({self.images.shape[0]},), got "
                               f"{tuple(self.labels.shape)}")
        self.labels = self.labels.long()

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def check(self, num_classes: int, shape: tuple[int, int, int], source: str = "condensed set") -> None:
        """Raise ``PayloadError`` unless images have the teacher's shape and labels its classes."""
        if tuple(self.images.shape[1:]) != tuple(shape):
            raise PayloadError(f"{source}: images are {tuple(self.images.shape[1:])} (C x H x W) but the teacher "
                               f"expects {tuple(shape)}; condense the teacher's dataset at its resolution")
        if len(self) and (int(self.labels.min()) < 0 or int(self.labels.max()) >= num_classes):
            raise PayloadError(f"{source}: labels span {int(self.labels.min())}..{int(self.labels.max())} but the "
                               f"teacher has {num_classes} classes (0..{num_classes - 1})")

    @classmethod
    def from_real(cls, data: LabeledImages, ipc: int, seed: int = 0) -> CondensedSet:
        """``ipc`` real images per class (the paper's few-shot "RS" setting, and a development stand-in)."""
        from shared.data import few_shot_indices

        subset = data.subset(few_shot_indices(data.labels.numpy(), ipc, seed))
        return cls(subset.normalized(), subset.labels, [f"real:{data.info.name}:{ipc}"])


def load_condensed(path: str | Path, card: ModelCard) -> CondensedSet:
    """Read a payload file or a folder of ``*.safetensors`` payloads and check them against the teacher."""
    from shared.payload import LOCAL_MAX_BYTES, LOCAL_MAX_IPC, CondensedPayload, PayloadSpec, validate_payload

    path = Path(path)
    files = sorted(path.glob("*.safetensors")) if path.is_dir() else [path]
    if not files:
        raise PayloadError(f"--condensed {path}: no *.safetensors payload files in this folder")
    payloads = {str(file): CondensedPayload.load(file) for file in files}
    spec = PayloadSpec.for_teacher(card, max_ipc=LOCAL_MAX_IPC, max_bytes=LOCAL_MAX_BYTES)
    for file, payload in payloads.items():
        check_classes(file, payload.meta.class_names, card)
        try:  # the ServerApp's validator: NaN pixels, counts, IPC, size, mean/std and epsilon are checked here too
            validate_payload(payload, spec)
        except PayloadError as exc:
            raise PayloadError(f"{file}: {exc}") from None
    return condensed_from_payloads(payloads, card)


def check_classes(source: str, names: list[str] | None, card: ModelCard) -> None:
    """A payload fits the teacher by its classes, channels and size, not by its dataset's name (a site's own
    ``folder`` images serve a Fashion-MNIST teacher): the class names its labels index must be the teacher's,
    or plain ids ("0", "1", ...: numeric folders, labels by value); a payload without names has ids as labels.
    Geometry and label range are checked by ``condensed_from_payloads``."""
    teacher = list(card.class_names)
    if not names or not teacher or names == teacher or names == [str(i) for i in range(len(names))]:
        return
    raise PayloadError(f"{source}: its labels index the classes {names} but the teacher's are {teacher}; condense "
                       "with `condex condense --teacher TEACHER_DIR` so folder names map to the teacher's class ids")


def condensed_from_payloads(payloads: Mapping[str, CondensedPayload], card: ModelCard) -> CondensedSet:
    """Payloads (by source name) as one condensed set in the *teacher's* normalised space: pixels are what
    sites share, so a site that condensed with its own statistics is re-normalised, not rejected."""
    stats = (tuple(card.mean), tuple(card.std))
    shape = (card.in_channels, card.image_size, card.image_size)
    sets = [CondensedSet(normalize(p.images.float(), stats), p.labels) for p in payloads.values()]
    for source, condensed in zip(payloads, sets, strict=True):
        condensed.check(card.num_classes, shape, source)
    eps = [float(p.meta.epsilon) for p in payloads.values() if p.meta.epsilon is not None]
    return CondensedSet(torch.cat([c.images for c in sets]), torch.cat([c.labels for c in sets]), list(payloads),
                        max(eps) if eps else None)


@dataclass
class DistillResult:
    student: nn.Module
    accuracy: float | None  # final test accuracy (fraction), None without a test set
    epochs: int
    train_seconds: float  # synthesis + KD wall time (the budgeted time)
    phase_seconds: dict[str, float]
    compute_fraction: float  # share of synthesis + KD time spent in model forward/backward
    pool_size: int
    synthetic_seen: int
    peak_memory_mb: float
    curve: list[dict[str, float]]  # [{"seconds", "epoch", "accuracy"}]

    def summary(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "student"}


class Distiller:
    """Builds the engine parts for a config and runs Algorithm 1 with run management."""

    def __init__(self, cfg: DistillConfig, teacher: nn.Module, card: ModelCard, condensed: CondensedSet | None,
                 test: LabeledImages | None, run_dir: str | Path, device: torch.device | str = "cpu",
                 seed: int = 0, progress: bool = True, provenance: dict[str, Any] | None = None) -> None:
        cfg.validate()
        self.cfg, self.card, self.seed, self.progress = cfg, card, seed, progress
        self.device = torch.device(device)
        self.shape = (card.in_channels, card.image_size, card.image_size)
        self.num_classes = card.num_classes
        if cfg.uses_condensed and (condensed is None or len(condensed) == 0):
            raise ConfigError(f"distill.mode={cfg.mode} needs condensed samples (--condensed); use mode=mi without")
        if condensed is not None:
            condensed.check(card.num_classes, self.shape)
        self.condensed = condensed
        # identifies the condensed set in the checkpoint: --resume refuses to continue on another one
        self.condensed_sha256 = None if condensed is None else tensors_sha256(condensed.images, condensed.labels)
        self.last_checkpoint = -math.inf  # train_seconds at the last save (time-based checkpoint cadence)
        self.last_epoch_seconds = 0.0  # training seconds of the last epoch (predicts the next one)
        self.test = test
        self.run = RunDir(run_dir)
        self.provenance = provenance or {}
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        seed_everything(seed)
        self.teacher = teacher.to(self.device).eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.student = build_model(cfg.student, num_classes=card.num_classes, in_channels=card.in_channels,
                                   image_size=card.image_size).to(self.device)
        self.kd_loss = get_kd_loss(cfg.kd_loss)
        self.optimizer = self._student_optimizer()
        self.pool = self._build_pool()
        self.generator: Generator | None = None
        self.method: InversionMethod | None = None
        self.guidance: FeatureAlignment | None = None
        if cfg.synthesizes:
            self._build_inversion()
        self.timer = PhaseTimer()
        self.profiler: ComputeProfiler | None = None  # set by fit(): counts forward/backward in the budget
        self.compute_seconds: dict[str, float] = {}  # carried across --resume
        self.reference_features = self._reference_features()
        self.epoch = 0
        self.last_eval = -math.inf
        self.curve: list[dict[str, float]] = []
        self.last_batch: SyntheticBatch | None = None

    # -- construction --------------------------------------------------------------------------------
    def _student_optimizer(self) -> torch.optim.Optimizer:
        cfg = self.cfg
        if cfg.student_optimizer == "sgd":
            return torch.optim.SGD(self.student.parameters(), lr=cfg.lr_student, momentum=0.9,
                                   weight_decay=cfg.weight_decay, nesterov=True)
        return torch.optim.Adam(self.student.parameters(), lr=cfg.lr_student, weight_decay=cfg.weight_decay)

    def _build_pool(self) -> Replay:
        check_views(self.cfg)
        condensed = None
        if self.cfg.uses_condensed and self.condensed is not None:
            images = self.condensed.images.to(self.device)
            condensed = self._with_views(images, self.condensed.labels.to(self.device), self._teacher_logits(images))
        return replays.get(self.cfg.replay)(self.cfg, condensed, self.teacher)

    @property
    def views(self) -> int:
        """Pool entries per image: ``distill.kd_views`` cached views (1: the image itself)."""
        return max(1, self.cfg.kd_views)

    def _with_views(self, images: torch.Tensor, labels: torch.Tensor, logits: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Each image and ``kd_views - 1`` crop/flip views of it, each with its teacher logits. Labelling a view
        once when it enters the pool replaces a teacher forward in every KD step that draws it (a sample is
        drawn about kd_steps * kd_batch_size / pool size times per epoch, ~100 at the defaults)."""
        if self.views == 1:
            return images, labels, logits
        stats = (tuple(self.card.mean), tuple(self.card.std))
        pixels = denormalize(images, stats)
        extra = torch.cat([normalize(augment_batch(pixels, self.cfg.kd_augment), stats)
                           for _ in range(self.views - 1)])
        return (torch.cat([images, extra]), labels.repeat(self.views),
                torch.cat([logits, self._teacher_logits(extra)]))

    @torch.no_grad()
    def _teacher_logits(self, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        return torch.cat([self.teacher(images[i:i + batch_size]).float() for i in range(0, len(images), batch_size)])

    @torch.no_grad()
    def _reference_features(self) -> torch.Tensor | None:
        """Teacher features of the condensed set: what synthetic batches are measured against (metrics only)."""
        if self.condensed is None or not self.cfg.synthesizes or int(getattr(self.teacher, "feature_dim", 0)) <= 0:
            return None
        images = self.condensed.images.to(self.device)
        return torch.cat([self.teacher(images[i:i + 512], return_features=True)[1].float().cpu()
                          for i in range(0, len(images), 512)])

    def _build_inversion(self) -> None:
        cfg, card = self.cfg, self.card
        self.generator = Generator(cfg.latent_dim, card.in_channels, card.image_size, card.mean, card.std,
                                   width=cfg.generator_width,
                                   num_classes=card.num_classes if cfg.conditional_generator else 0,
                                   conditioning=cfg.generator_conditioning).to(self.device)
        if cfg.guided:
            assert self.condensed is not None
            feature_dim = int(getattr(self.teacher, "feature_dim", 0))
            if feature_dim <= 0:
                raise ConfigError("mode mi* needs a teacher that returns penultimate features "
                                  "(forward(x, return_features=True)); use a zoo teacher or mode mi+cs")
            self.guidance = FeatureAlignment(
                self.teacher, self.condensed.images.to(self.device), self.condensed.labels.to(self.device),
                card.num_classes, feature_dim, cfg.discriminator_hidden, cfg.lr_discriminator,
                cfg.condensed_batch_size, cfg.diffaugment)
        ctx = InversionContext(self.teacher, self.student, self.generator, card.num_classes, cfg, self.device,
                               guidance=self.guidance)
        self.method = build_method(cfg.base, ctx)

    # -- one epoch ------------------------------------------------------------------------------------
    def _synthesize(self) -> dict[str, float]:
        assert self.method is not None
        self.method.ctx.epoch = self.epoch
        self.student.eval()  # the adversarial term probes the student as it is (Fast-Datafree, CMI)
        batch = self.method.synthesize()
        if self.epoch % self.cfg.pool_every == 0:
            self.pool.add(*self._with_views(batch.images, batch.targets, batch.teacher_logits))
        self.last_batch = batch
        return batch.losses | self._batch_quality(batch)

    def _batch_quality(self, batch: SyntheticBatch) -> dict[str, Any]:
        requested = batch.targets if batch.requested is None else batch.requested
        quality: dict[str, Any] = dict(label_statistics(requested, batch.teacher_logits))
        if batch.features is not None and self.reference_features is not None:
            quality |= manifold_metrics(batch.features, self.reference_features)
        if "bn" in batch.losses and self.cfg.bn_weight > 0:
            quality["bn_raw"] = batch.losses["bn"] / self.cfg.bn_weight
        return quality

    def _kd_step(self) -> float:
        cfg = self.cfg
        batch = self.pool.sample(cfg.kd_batch_size)
        x, t_logits = batch.images, batch.teacher_logits
        if cfg.kd_augment != "none" and cfg.kd_views == 0:  # a fresh view, labelled now
            stats = (tuple(self.card.mean), tuple(self.card.std))
            x = normalize(augment_batch(denormalize(x, stats), cfg.kd_augment), stats)
            t_logits = self._teacher_logits(x)
        self.student.train()
        per_sample = self.kd_loss(self.student(x), t_logits, cfg.temperature)
        loss = per_sample.mean()
        self.optimizer.zero_grad(set_to_none=True)
        backward(loss)
        self.optimizer.step()
        self.pool.feedback(batch.indices, per_sample.detach())
        return float(loss.detach())

    def _progress_fraction(self) -> float:
        cfg = self.cfg
        parts = [self.epoch / cfg.epochs if cfg.epochs else 0.0,
                 self.train_seconds / cfg.budget_seconds if cfg.budget_seconds else 0.0]
        return min(1.0, max(parts))

    def _set_lr(self) -> None:
        scale = 1.0
        if self.cfg.lr_schedule == "cosine":
            scale = 0.5 * (1.0 + math.cos(math.pi * self._progress_fraction()))
        for group in self.optimizer.param_groups:
            group["lr"] = self.cfg.lr_student * scale

    def _kd_now(self) -> bool:
        """KD runs every epoch, except warm-up epochs of a synthesising run unless ``kd_in_warmup``."""
        cfg = self.cfg
        return cfg.kd_in_warmup or not cfg.synthesizes or self.epoch >= cfg.warmup_epochs

    @property
    def synthesis_spent(self) -> bool:
        """``distill.synthetic_budget`` synthetic samples made: from now on the epochs are KD only."""
        budget = self.cfg.synthetic_budget
        return bool(budget) and self.pool.seen // self.views >= budget

    @property
    def train_seconds(self) -> float:
        return self.timer.total("synthesis", "kd")

    def _done(self) -> bool:
        cfg = self.cfg
        return bool((cfg.epochs and self.epoch >= cfg.epochs)
                    or (cfg.budget_seconds and self.train_seconds >= cfg.budget_seconds))

    def run_epoch(self) -> dict[str, Any]:
        """Algorithm 1, one iteration: synthesise + add to the pool, then ``kd_steps`` KD steps."""
        self._set_lr()
        record: dict[str, Any] = {"event": "epoch", "epoch": self.epoch + 1}
        if self.cfg.synthesizes and not self.synthesis_spent:
            with self.timer.phase("synthesis"), self._counting():
                record.update(self._synthesize())
        losses: list[float] = []
        if self._kd_now():
            with self.timer.phase("kd"), self._counting():
                losses = [self._kd_step() for _ in range(self.cfg.kd_steps)]
        self.epoch += 1
        if losses:
            record["kd_loss"] = sum(losses) / len(losses)
        record.update(pool=len(self.pool) // self.views, seconds=self.train_seconds,
                      lr=self.optimizer.param_groups[0]["lr"])
        return record

    def _counting(self) -> Any:
        return self.profiler.counting() if self.profiler is not None else contextlib.nullcontext()

    @property
    def compute_fraction(self) -> float:
        """Share of the budgeted (synthesis + KD) time spent in model forward/backward, over the whole run."""
        seconds = self.profiler.compute_seconds if self.profiler is not None else 0.0
        return seconds / self.train_seconds if self.train_seconds > 0 else 0.0

    # -- evaluation, checkpoints, grids ----------------------------------------------------------------
    def evaluate(self, full: bool = False) -> float | None:
        if self.test is None or len(self.test) == 0:
            return None
        data = self.test if full or self.cfg.eval_samples >= len(self.test) else \
            self.test.subset(range(self.cfg.eval_samples))
        with self.timer.phase("eval"):
            accuracy = evaluate(self.student, data, self.device, stats=(tuple(self.card.mean), tuple(self.card.std)))
        self.curve.append({"seconds": self.train_seconds, "epoch": self.epoch, "accuracy": accuracy})
        self.run.log({"event": "eval", "epoch": self.epoch, "seconds": self.train_seconds, "accuracy": accuracy,
                      "full_test": full or data is self.test})
        self.last_eval = self.train_seconds
        return accuracy

    def state_dict(self) -> dict[str, Any]:
        return {
            "config": dataclasses.asdict(self.cfg), "seed": self.seed, "epoch": self.epoch,
            "timer": dict(self.timer.totals), "last_eval": self.last_eval, "curve": self.curve,
            "student": self.student.state_dict(), "optimizer": self.optimizer.state_dict(),
            "generator": None if self.generator is None else self.generator.state_dict(),
            "method": None if self.method is None else self.method.state_dict(),
            "guidance": None if self.guidance is None else self.guidance.state_dict(),
            "pool": self.pool.state_dict(), "rng": rng_state(),
            "compute_seconds": dict(self.profiler.seconds) if self.profiler is not None else self.compute_seconds,
            "condensed_sha256": self.condensed_sha256,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved_set = state.get("condensed_sha256", self.condensed_sha256)  # older states carry no hash
        if saved_set != self.condensed_sha256:
            raise CheckpointError(f"--resume with a different condensed set than {self.run.state_file} was trained "
                                  "on; resume with the original --condensed (or omit it: run.json names it) or "
                                  "start a new --out")
        try:
            self._load_state(state)
        except CondexError:
            raise
        except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as exc:
            raise CheckpointError(f"checkpoint {self.run.state_file} does not fit this run ({type(exc).__name__}: "
                                  f"{str(exc)[:300]}); delete it or start a new --out") from None

    def _load_state(self, state: dict[str, Any]) -> None:
        saved, now = state["config"], dataclasses.asdict(self.cfg)
        # a setting added after the state was written counts as unchanged while it keeps its default
        saved = dataclasses.asdict(DistillConfig()) | saved
        changed = sorted(k for k in now if k not in RESUMABLE_CHANGES and saved.get(k) != now[k])
        if changed:
            detail = ", ".join(f"distill.{k}: {saved.get(k)!r} -> {now[k]!r}" for k in changed)
            raise ConfigError(f"--resume with a different configuration ({detail}); only budgets and logging "
                              "cadence may change. Use the original settings or a new --out directory")
        self.epoch, self.last_eval, self.curve = int(state["epoch"]), float(state["last_eval"]), list(state["curve"])
        self.timer = PhaseTimer(state["timer"])
        self.student.load_state_dict(state["student"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.generator is not None:
            self.generator.load_state_dict(state["generator"])
        if self.method is not None:
            self.method.load_state_dict(state["method"])
        if self.guidance is not None:
            self.guidance.load_state_dict(state["guidance"])
        self.pool.load_state_dict(state["pool"])
        self.compute_seconds = dict(state.get("compute_seconds", {}))
        set_rng_state(state["rng"])

    def save(self) -> None:
        with self.timer.phase("checkpoint"):
            self.run.save_state(self.state_dict())
        self.last_checkpoint = self.train_seconds

    def _checkpoint_due(self) -> bool:
        """Every ``checkpoint_every`` epochs and whenever ``checkpoint_every_seconds`` of training went by since
        the last save (so a kill loses at most that much, or one epoch if an epoch takes longer)."""
        cfg = self.cfg
        by_epoch = bool(cfg.checkpoint_every) and self.epoch % cfg.checkpoint_every == 0
        # save now if the next epoch (as long as the last one) would take the unsaved training past the limit
        unsaved_after_next = self.train_seconds - self.last_checkpoint + self.last_epoch_seconds
        by_time = bool(cfg.checkpoint_every_seconds) and unsaved_after_next > cfg.checkpoint_every_seconds
        return by_epoch or by_time

    def save_grids(self) -> None:
        """The last synthetic batch beside the condensed set (``grids/``) and the run's plots (``plots/``)."""
        grids = self.run.path / "grids"
        mean, std = self.card.mean, self.card.std
        names = list(self.card.class_names) or [str(c) for c in range(self.num_classes)]
        condensed = None
        if self.condensed is not None:
            condensed = (to_pixels(self.condensed.images, mean, std), self.condensed.labels)
        with self.timer.phase("grids"):
            batch = self.last_batch
            if batch is not None:
                requested = batch.targets if batch.requested is None else batch.requested
                save_comparison_grid(grids / f"synthetic_epoch{self.epoch:06d}.png", names,
                                     to_pixels(batch.images, mean, std), requested, batch.targets, condensed)
            if condensed is not None and not (grids / "condensed.png").exists():
                save_class_grid(grids / "condensed.png", *condensed, self.num_classes)
            try:
                plot_run(self.run.read_metrics(), self.run.path / "plots" / "run.png",
                         f"{self.cfg.base} {self.cfg.mode}, student {self.cfg.student}")
            except (OSError, ValueError) as error:  # a plot is not worth ending a distillation over
                warnings.warn(f"run plot not written: {error}", stacklevel=2)

    # -- the loop -------------------------------------------------------------------------------------
    def fit(self, resume: bool = False) -> DistillResult:
        if resume:
            self.load_state_dict(self.run.load_state())
            self.run.truncate_metrics(self.epoch)
            self.last_checkpoint = self.train_seconds
        else:
            if self.run.metrics_file.exists():
                self.run.metrics_file.unlink()  # a fresh run in an old directory starts a fresh log
            self._start_run()
        modules = {"teacher": self.teacher, "student": self.student}
        modules |= {"generator": self.generator} if self.generator is not None else {}
        modules |= {"discriminator": self.guidance.discriminator} if self.guidance is not None else {}
        profiler = ComputeProfiler(modules, synchronize=self.device.type == "cuda", seconds=self.compute_seconds)
        self.profiler = profiler
        cfg = self.cfg
        total = cfg.epochs if cfg.epochs else cfg.budget_seconds
        try:
            with profiling(profiler), progress_bar(total, f"distill {cfg.base} {cfg.mode}", self.progress) as bar:
                bar.advance(self.epoch if cfg.epochs else self.train_seconds)
                while not self._done():
                    self._one_epoch(bar)
        finally:
            profiler.remove()
            if self.method is not None:
                self.method.close()
        return self._finish(profiler)

    def _start_run(self) -> None:
        """``run.json`` (what --resume needs besides --out) and a first checkpoint before any training, so a
        run killed in its first epoch can resume too."""
        self.run.write_run({"provenance": self.provenance, "seed": self.seed, "device": str(self.device),
                            "distill": dataclasses.asdict(self.cfg), "condensed_sha256": self.condensed_sha256})
        if self.cfg.checkpoint_every or self.cfg.checkpoint_every_seconds:
            self.save()

    def _one_epoch(self, bar: Any) -> None:
        cfg = self.cfg
        before = self.train_seconds
        record = self.run_epoch()
        self.last_epoch_seconds = self.train_seconds - before
        self.run.log(record)
        shown = {k: record[k] for k in ("kd_loss", "g_loss", "d_loss") if k in record}
        if self.train_seconds - self.last_eval >= cfg.eval_every_seconds:
            accuracy = self.evaluate()
            if accuracy is not None:
                shown["acc"] = accuracy
        bar.advance(1 if cfg.epochs else self.train_seconds - before, **shown)
        if self._checkpoint_due():
            self.save()
        if cfg.grid_every and self.epoch % cfg.grid_every == 0:
            self.save_grids()

    def _finish(self, profiler: ComputeProfiler) -> DistillResult:
        accuracy = self.evaluate(full=True)
        self.save()
        self.save_grids()
        train = self.train_seconds
        result = DistillResult(
            student=self.student.eval(), accuracy=accuracy, epochs=self.epoch, train_seconds=train,
            phase_seconds=dict(self.timer.totals),
            compute_fraction=self.compute_fraction,
            pool_size=len(self.pool) // self.views, synthetic_seen=self.pool.seen // self.views,
            peak_memory_mb=peak_memory_mb(), curve=self.curve)
        save_checkpoint(self.run.path / "student", self.student, self.student_card(accuracy))
        self.run.write_json("summary.json", result.summary() | {"config": dataclasses.asdict(self.cfg)})
        return result

    def student_card(self, accuracy: float | None) -> ModelCard:
        card = self.card
        provenance = {
            "teacher": {"arch": card.arch, "dataset": card.dataset, "test_accuracy": card.test_accuracy},
            "payloads": self.condensed.sources if self.condensed is not None and self.cfg.uses_condensed else [],
            "epsilon": self.condensed.epsilon if self.condensed is not None and self.cfg.uses_condensed else None,
            "distill": {"base": self.cfg.base, "mode": self.cfg.mode, "epochs": self.epoch,
                        "train_seconds": round(self.train_seconds, 1)},
        } | self.provenance
        student = self.student
        return ModelCard(
            arch=getattr(student, "arch", self.cfg.student), arch_kwargs=dict(getattr(student, "arch_kwargs", {})),
            dataset=card.dataset, num_classes=card.num_classes, in_channels=card.in_channels,
            image_size=card.image_size, mean=list(card.mean), std=list(card.std), class_names=list(card.class_names),
            test_accuracy=accuracy, seed=self.seed, command=" ".join(sys.argv), role="student", provenance=provenance)
