"""What one synthetic batch is worth, measured from the server's side (it has no real data).

* ``agreement``: share of images the teacher assigns to the class they were generated for;
* ``confidence``: mean teacher max-softmax; ``label_entropy``: entropy of the teacher's pseudo-label
  histogram divided by log(classes) (1 = perfectly balanced), ``classes_present``: classes with >= 1 image;
* against the condensed set, in teacher penultimate-feature space with k-nearest-neighbour balls:
  ``precision`` / ``recall`` (Kynkäänniemi et al. 2019: synthetic inside the condensed manifold, condensed
  inside the synthetic one) and ``coverage`` (Naeem et al. 2020: condensed samples whose own k-NN ball
  holds a synthetic one). The condensed set is a proxy for the private data; these say how much of it
  the synthetic images reach, not how close they are to any private image."""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F


def label_statistics(targets: torch.Tensor, logits: torch.Tensor) -> dict[str, float | list[int]]:
    """Agreement with the requested ``targets``, confidence and the pseudo-label histogram of ``logits``."""
    num_classes = logits.shape[1]
    predicted = logits.argmax(1)
    histogram = torch.bincount(predicted, minlength=num_classes).float()
    share = histogram / histogram.sum()
    entropy = -(share[share > 0] * share[share > 0].log()).sum()
    return {
        "agreement": float((predicted == targets).float().mean()),
        "confidence": float(F.softmax(logits.float(), dim=1).max(1).values.mean()),
        "label_entropy": float(entropy / math.log(num_classes)) if num_classes > 1 else 1.0,
        "classes_present": int((histogram > 0).sum()),
        "label_histogram": [int(v) for v in histogram.tolist()],
    }


def _kth_radius(features: torch.Tensor, k: int) -> torch.Tensor:
    """Distance of each row to its k-th nearest other row (inf when there are not k others)."""
    if features.shape[0] <= k:
        return torch.full((features.shape[0],), math.inf)
    distances = torch.cdist(features, features)
    return distances.kthvalue(k + 1, dim=1).values  # +1: the row itself is at distance 0


def manifold_metrics(synthetic: torch.Tensor, reference: torch.Tensor, k: int = 5) -> dict[str, float]:
    """Precision, recall and coverage of ``synthetic`` features against ``reference`` features."""
    synthetic, reference = synthetic.float().cpu(), reference.float().cpu()
    if synthetic.shape[0] == 0 or reference.shape[0] == 0:
        return {}
    real_radius, fake_radius = _kth_radius(reference, k), _kth_radius(synthetic, k)
    cross = torch.cdist(synthetic, reference)  # synthetic x reference
    inside_real = cross <= real_radius[None, :]
    return {
        "precision": float(inside_real.any(dim=1).float().mean()),
        "recall": float((cross <= fake_radius[:, None]).any(dim=0).float().mean()),
        "coverage": float(inside_real.any(dim=0).float().mean()),
    }
