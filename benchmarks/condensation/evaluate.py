"""The DC/DSA evaluation protocol: train a fresh ConvNet-3 on the condensed set only, test on real data.

Training uses DSA augmentation (independent per sample), SGD with momentum 0.9 and weight decay 5e-4,
learning rate 0.01 divided by 10 half-way, as the DC/DSA/DM papers. What differs on 2 CPU cores is the
length: the papers train 1000 epochs; here the number of epochs is capped so one net sees at most
``max_samples`` augmented images (``epochs_for`` says how many epochs that is), and the width is a knob.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from shared.augment.dsa import SiameseAugment
from shared.data import LabeledImages
from shared.device import seed_everything
from shared.models import build_model
from shared.payload import CondensedPayload


@dataclass(frozen=True)
class EvalConfig:
    model: str = "convnet3"
    width: int = 128
    depth: int = 3
    epochs: int = 300
    max_samples: int = 30_000  # cap on augmented images one net trains on (CPU budget)
    batch: int = 256
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    dsa: bool = True
    nets: int = 3
    test_size: int = 0  # 0 = the whole test split; else a class-stratified subset of this size


def epochs_for(num_images: int, cfg: EvalConfig) -> int:
    return max(1, min(cfg.epochs, cfg.max_samples // max(num_images, 1)))


def train_and_test(images: torch.Tensor, labels: torch.Tensor, test_images: torch.Tensor, test_labels: torch.Tensor,
                   num_classes: int, cfg: EvalConfig, seed: int) -> float:
    """Accuracy on the test set of one ConvNet trained from scratch on (images, labels), both normalised."""
    seed_everything(seed)
    generator = torch.Generator().manual_seed(seed)
    net = build_model(cfg.model, num_classes=num_classes, in_channels=images.shape[1],
                      image_size=(images.shape[2], images.shape[3]), width=cfg.width, depth=cfg.depth)
    optimizer = torch.optim.SGD(net.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    epochs = epochs_for(len(images), cfg)
    per_epoch = math.ceil(len(images) / cfg.batch)
    augment = SiameseAugment(generator=generator) if cfg.dsa else None
    net.train()
    for epoch in range(epochs):
        if epoch == epochs // 2:
            for group in optimizer.param_groups:
                group["lr"] = cfg.lr * 0.1
        order = torch.randperm(len(images), generator=generator)
        for step in range(per_epoch):
            index = order[step * cfg.batch:(step + 1) * cfg.batch]
            x = augment(images[index]) if augment is not None else images[index]
            loss = F.cross_entropy(net(x), labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return accuracy(net, test_images, test_labels)


@torch.no_grad()
def accuracy(net: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, batch: int = 1000) -> float:
    net.eval()
    correct = sum(int((net(images[i:i + batch]).argmax(1) == labels[i:i + batch]).sum())
                  for i in range(0, len(images), batch))
    return correct / max(len(images), 1)


def test_subset(test: LabeledImages, size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised test images and labels: all, or a class-stratified random subset of ``size``."""
    if size <= 0 or size >= len(test):
        return test.normalized(), test.labels
    from shared.data import few_shot_indices

    index = few_shot_indices(test.labels.numpy(), max(1, size // test.info.num_classes), seed=seed)
    return test.subset(index).normalized(), test.labels[torch.as_tensor(index)]


def evaluate_payload(payload: CondensedPayload, test_images: torch.Tensor, test_labels: torch.Tensor,
                     cfg: EvalConfig, seed: int = 0) -> list[float]:
    """Test accuracy of ``cfg.nets`` ConvNets trained from scratch on the payload, one per seed."""
    images, labels = payload.normalized(), payload.labels
    return [train_and_test(images, labels, test_images, test_labels, payload.meta.num_classes, cfg, seed + i)
            for i in range(cfg.nets)]
