"""What a hostile site sends instead of an honest payload: one function per attack, found by name.

Each attack keeps the payload's metadata (method, dataset, IPC, class names, normalisation), so it passes
``validate_payload`` like the honest payload it replaces; only the images or the labels lie:

* ``flip``: every label moved to the next class, ``(y + 1) mod classes`` (the images stay honest), with
  the self-reported class counts moved alike so the payload stays consistent;
* ``noise``: uniform random pixels under the honest labels;
* ``ood``: images of another dataset (scikit-learn's 8x8 handwritten digits, resized to the payload's
  geometry) under the honest labels."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import torch
from torch.nn import functional as F

from shared.payload import CondensedPayload
from shared.registry import Registry

Attack = Callable[[CondensedPayload, torch.Generator], CondensedPayload]
attacks: Registry[Attack] = Registry("attack")


@attacks.register("flip")
def flip_labels(payload: CondensedPayload, generator: torch.Generator) -> CondensedPayload:
    del generator
    counts = payload.meta.local_class_counts
    meta = payload.meta if counts is None else replace(payload.meta, local_class_counts=counts[-1:] + counts[:-1])
    return replace(payload, labels=(payload.labels + 1) % payload.meta.num_classes, meta=meta)


@attacks.register("noise")
def uniform_noise(payload: CondensedPayload, generator: torch.Generator) -> CondensedPayload:
    return replace(payload, images=torch.rand(payload.images.shape, generator=generator))


@attacks.register("ood")
def other_dataset(payload: CondensedPayload, generator: torch.Generator) -> CondensedPayload:
    from sklearn.datasets import load_digits

    digits = torch.from_numpy(load_digits().images).float().div_(16.0).unsqueeze(1)  # 1797 x 1 x 8 x 8 in [0, 1]
    picks = torch.randint(len(digits), (len(payload),), generator=generator)
    _, channels, height, width = payload.images.shape
    images = F.interpolate(digits[picks], size=(height, width), mode="bilinear", align_corners=False)
    return replace(payload, images=images.clamp(0.0, 1.0).expand(-1, channels, -1, -1).contiguous())


def poison(payloads: dict[str, CondensedPayload], attack: str, hostile: int, seed: int = 0
           ) -> tuple[dict[str, CondensedPayload], list[str]]:
    """``payloads`` with the first ``hostile`` sites (by name) replaced by ``attack``; returns them and those names."""
    if not 0 <= hostile <= len(payloads):
        raise ValueError(f"hostile={hostile}: must be between 0 and the {len(payloads)} sites")
    make = attacks.get(attack)
    generator = torch.Generator().manual_seed(seed)
    names = sorted(payloads)[:hostile]
    return {n: make(p, generator) if n in names else p for n, p in payloads.items()}, names
