"""A small supervised training and evaluation loop for image classifiers on ``LabeledImages``.

Used to train teachers (``server/teacher.py``) and reusable wherever a model is fitted to real data (e.g.
baselines). Data stays in memory as uint8; each batch is augmented on the fly in pixel space, then
normalised with the dataset's statistics, so no worker processes are needed on small machines."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from shared.data import LabeledImages, normalize
from shared.device import autocast, grad_scaler
from shared.errors import ConfigError
from shared.progress import progress_bar

AUGMENTS = ("auto", "none", "crop", "crop_flip")
SCHEDULES = ("onecycle", "cosine", "constant")
Stats = tuple[tuple[float, ...], tuple[float, ...]]


@dataclass
class EpochStats:
    epoch: int
    loss: float
    train_accuracy: float
    test_accuracy: float | None
    seconds: float


@dataclass
class TrainHistory:
    epochs: list[EpochStats] = field(default_factory=list)

    @property
    def final_test_accuracy(self) -> float | None:
        return self.epochs[-1].test_accuracy if self.epochs else None

    @property
    def seconds(self) -> float:
        return sum(e.seconds for e in self.epochs)


def resolve_augment(augment: str, channels: int) -> str:
    """``auto``: crop + flip for colour images; crop only for grey ones (FMNIST's shoes all face left)."""
    if augment not in AUGMENTS:
        raise ConfigError(f"augment={augment!r} must be one of {', '.join(AUGMENTS)}")
    if augment == "auto":
        return "crop_flip" if channels == 3 else "crop"
    return augment


def random_crop(pixels: torch.Tensor, padding: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Zero-pad each image by ``padding`` and cut a random window of the original size (one per image)."""
    if padding <= 0:
        return pixels
    n, c, h, w = pixels.shape
    padded = F.pad(pixels, (padding, padding, padding, padding))
    dev = pixels.device
    off_h = torch.randint(0, 2 * padding + 1, (n,), generator=generator).to(dev)
    off_w = torch.randint(0, 2 * padding + 1, (n,), generator=generator).to(dev)
    # Two gathers (rows, then columns) are ~2x faster on CPU than one 4-D advanced index.
    rows = (off_h[:, None] + torch.arange(h, device=dev))[:, None, :, None].expand(n, c, h, w + 2 * padding)
    cols = (off_w[:, None] + torch.arange(w, device=dev))[:, None, None, :].expand(n, c, h, w)
    return padded.gather(2, rows).gather(3, cols)


def random_flip(pixels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    flip = (torch.rand(pixels.shape[0], generator=generator) < 0.5).to(pixels.device)
    return torch.where(flip[:, None, None, None], pixels.flip(3), pixels)


def augment_batch(pixels: torch.Tensor, augment: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """Apply a resolved augmentation (``none``/``crop``/``crop_flip``) to float pixels in [0, 1]."""
    if augment in ("crop", "crop_flip"):
        pixels = random_crop(pixels, max(1, pixels.shape[-1] // 8), generator)
    if augment == "crop_flip":
        pixels = random_flip(pixels, generator)
    return pixels


def _scheduler(optimizer: torch.optim.Optimizer, schedule: str, lr: float, total_steps: int
               ) -> torch.optim.lr_scheduler.LRScheduler:
    if schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=total_steps, pct_start=0.25)
    if schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    if schedule == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    raise ConfigError(f"schedule={schedule!r} must be one of {', '.join(SCHEDULES)}")


def train_classifier(
    model: nn.Module,
    train: LabeledImages,
    test: LabeledImages | None,
    epochs: int,
    batch_size: int = 128,
    lr: float = 0.1,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    schedule: str = "onecycle",
    label_smoothing: float = 0.0,
    augment: str = "auto",
    device: torch.device | str = "cpu",
    progress: bool = True,
    seed: int = 0,
) -> TrainHistory:
    """Fit ``model`` with SGD (Nesterov) and cross-entropy; evaluate on ``test`` after every epoch."""
    if epochs < 1 or batch_size < 1 or lr <= 0:
        raise ConfigError(f"epochs={epochs}, batch_size={batch_size} must be >= 1 and lr={lr} > 0")
    if len(train) == 0:
        raise ConfigError("train set is empty; check the dataset and --limit-train")
    device = torch.device(device)
    mode = resolve_augment(augment, train.info.channels)
    model.to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay,
                                nesterov=momentum > 0)
    steps_per_epoch = math.ceil(len(train) / batch_size)
    scheduler = _scheduler(optimizer, schedule, lr, epochs * steps_per_epoch)
    generator = torch.Generator().manual_seed(seed)
    history = TrainHistory()
    with progress_bar(epochs * steps_per_epoch, "train", enabled=progress) as bar:
        for epoch in range(1, epochs + 1):
            start = time.perf_counter()
            loss, acc = _train_epoch(model, train, batch_size, mode, optimizer, scheduler, label_smoothing,
                                     device, generator, bar)
            stats = (train.info.mean, train.info.std)
            test_acc = evaluate(model, test, device, stats=stats) if test is not None and len(test) else None
            history.epochs.append(EpochStats(epoch, loss, acc, test_acc, time.perf_counter() - start))
            if test_acc is not None:
                bar.advance(0, test_acc=test_acc)
    return history


def _train_epoch(model: nn.Module, data: LabeledImages, batch_size: int, augment: str,
                 optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler,
                 label_smoothing: float, device: torch.device, generator: torch.Generator,
                 bar: object) -> tuple[float, float]:
    model.train()
    order = torch.randperm(len(data), generator=generator)
    total_loss, correct, seen = 0.0, 0, 0
    scaler = grad_scaler(device)  # fp16 autocast on CUDA needs loss scaling; a no-op on CPU
    for start in range(0, len(data), batch_size):
        idx = order[start:start + batch_size]
        pixels = data.images[idx].to(device).float().div_(255.0)
        x = normalize(augment_batch(pixels, augment, generator), data.info)  # train stats
        y = data.labels[idx].to(device)
        with autocast(device):
            logits = model(x)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)  # skipped (and the scale lowered) when fp16 gradients overflowed
        scaler.update()
        scheduler.step()
        total_loss += float(loss.detach()) * len(idx)
        correct += int((logits.detach().argmax(1) == y).sum())
        seen += len(idx)
        bar.advance(1, loss=total_loss / seen, acc=correct / seen)  # type: ignore[attr-defined]
    return total_loss / seen, correct / seen


@torch.no_grad()
def predict(model: nn.Module, data: LabeledImages, device: torch.device | str = "cpu", batch_size: int = 512,
            stats: Stats | None = None) -> torch.Tensor:
    """Predicted class of every image (model in eval mode; its previous mode is restored). ``stats`` =
    (mean, std) the model was trained with; default: the data's own (they differ for ``folder`` splits)."""
    device = torch.device(device)
    stats = stats or (data.info.mean, data.info.std)
    was_training = model.training
    model.eval()
    preds = []
    try:
        for start in range(0, len(data), batch_size):
            x = normalize(data.images[start:start + batch_size].to(device).float().div_(255.0), stats)
            with autocast(device):
                preds.append(model(x).argmax(1).cpu())
    finally:
        model.train(was_training)
    return torch.cat(preds) if preds else torch.empty(0, dtype=torch.long)


def evaluate(model: nn.Module, data: LabeledImages, device: torch.device | str = "cpu", batch_size: int = 512,
             stats: Stats | None = None) -> float:
    """Top-1 accuracy (fraction in [0, 1]) of ``model`` on ``data``; ``stats`` as in ``predict``."""
    if len(data) == 0:
        raise ConfigError("cannot evaluate on an empty dataset")
    return float((predict(model, data, device, batch_size, stats) == data.labels).float().mean())
