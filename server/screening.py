"""Screening of site payloads before distillation: poisoned, noisy or copied samples are dropped and named.

A federated server cannot see the sites' data, but it holds the teacher, and honest payloads agree with it:
their images are condensed from the task's own distribution, so the teacher mostly confirms their labels and
their teacher features fall where the other sites' features of the same class fall. Three checks, in order:

1. **Teacher agreement.** Per site, the share of samples whose teacher label equals the payload's label
   (overall and per class). A site whose agreement is below ``screen.min_relative_agreement`` times the
   median agreement of the sites of its kind (DP or not) is rejected whole (label flipping, noise and
   out-of-distribution images land near 1/num_classes or below). The bar is relative because honest DP
   payloads are noisy by construction: the teacher confirms 0.91-0.98 of the labels of DM payloads but
   only 0.19-0.24 of DP-DM payloads (docs/robustness.md). With ``screen.drop_disagreeing``, each
   disagreeing sample of a non-DP payload is dropped; a DP payload is kept or rejected whole (dropping its
   unconfirmed samples would drop most of it).
2. **Feature outliers across sites.** Per class and kind (DP or not), the coordinate-wise median of the
   sites' teacher features (robust while fewer than half of the samples are poisoned) and each sample's
   distance to it, scored as a robust z-score, (d - median d) / (1.4826 MAD d). Samples above
   ``screen.outlier_z`` are dropped; a site with more than ``screen.max_site_outlier_share`` outliers is
   rejected whole. Classes with fewer than ``screen.min_class_samples`` samples are not scored. Needs a
   teacher that returns features (``forward(x, return_features=True)``); otherwise this check is skipped
   and the report says so.
3. **Near-duplicates.** Samples within ``screen.duplicate_distance`` RMS pixel distance of an earlier kept
   sample (the same site or another) are dropped: repeated images over-weight a site's vote in KD.

``screen_payloads`` returns the kept payloads and a JSON-ready report naming, per site, what was dropped
and why. It never raises on a hostile payload: the payloads have passed ``validate_payload`` already."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from shared.checkpoint import ModelCard
from shared.config.screen import ScreenConfig
from shared.data import normalize
from shared.payload import CondensedPayload

MAD_SCALE = 1.4826  # makes the MAD a consistent estimate of the standard deviation under normality


@dataclass
class SiteScreen:
    """What screening found for one site's payload."""

    samples: int
    agreement: float
    class_agreement: dict[int, float]
    disagreeing: list[int] = field(default_factory=list)  # sample indices the teacher labels otherwise
    outliers: list[int] = field(default_factory=list)
    duplicates: list[int] = field(default_factory=list)
    rejected: str | None = None  # the reason the whole payload was dropped

    def dropped(self) -> set[int]:
        return set(range(self.samples)) if self.rejected else set(self.disagreeing + self.outliers + self.duplicates)

    def summary(self) -> dict[str, Any]:
        kept = self.samples - len(self.dropped())
        return {"samples": self.samples, "kept": kept, "agreement": round(self.agreement, 4),
                "class_agreement": {str(c): round(a, 4) for c, a in sorted(self.class_agreement.items())},
                "disagreeing": self.disagreeing, "outliers": self.outliers, "duplicates": self.duplicates,
                "rejected": self.rejected}


@torch.no_grad()
def _teacher_view(teacher: nn.Module, images: torch.Tensor, batch: int = 512
                  ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Teacher labels and (when exposed) penultimate features of normalised ``images``, on CPU."""
    device = next(teacher.parameters()).device
    labels, features = [], []
    for start in range(0, images.shape[0], batch):
        chunk = images[start:start + batch].to(device)
        try:
            logits, feats = teacher(chunk, return_features=True)
            features.append(feats.flatten(1).float().cpu())
        except TypeError:  # a teacher without the feature interface: agreement and duplicates only
            logits = teacher(chunk)
        labels.append(logits.argmax(1).cpu())
    return torch.cat(labels), (torch.cat(features) if features and len(features) == len(labels) else None)


def robust_z(distances: torch.Tensor) -> torch.Tensor:
    """(d - median d) / (1.4826 MAD d), with torch's lower median for even counts; a zero MAD (most
    distances equal) makes every other distance an outlier, which is what a site of identical copies is."""
    median = distances.median()
    mad = (distances - median).abs().median() * MAD_SCALE
    return (distances - median) / mad.clamp(min=1e-12)


def feature_outliers(features: torch.Tensor, labels: torch.Tensor, cfg: ScreenConfig) -> torch.Tensor:
    """Boolean mask of samples whose class-median feature distance has robust z > ``cfg.outlier_z``."""
    mask = torch.zeros(labels.shape[0], dtype=torch.bool)
    for cls in labels.unique().tolist():
        members = torch.nonzero(labels == cls).flatten()
        if members.numel() < cfg.min_class_samples:
            continue
        centre = features[members].median(dim=0).values
        distances = (features[members] - centre).norm(dim=1)
        mask[members] = robust_z(distances) > cfg.outlier_z
    return mask


def near_duplicates(pixels: torch.Tensor, keep: torch.Tensor, threshold: float) -> torch.Tensor:
    """Mask of samples within RMS distance ``threshold`` of an earlier sample still in ``keep``."""
    flat = pixels.flatten(1).float()
    duplicate = torch.zeros(flat.shape[0], dtype=torch.bool)
    if threshold <= 0:
        return duplicate
    rms = torch.cdist(flat, flat) / flat.shape[1] ** 0.5
    close = torch.triu(rms < threshold, diagonal=1)  # (i, j) with i < j: j repeats an earlier i
    for j in range(flat.shape[0]):
        if keep[j] and bool((close[:j, j] & keep[:j] & ~duplicate[:j]).any()):
            duplicate[j] = True
    return duplicate


def _site_agreement(labels: torch.Tensor, seen: torch.Tensor) -> tuple[float, dict[int, float]]:
    agree = seen == labels
    per_class = {int(c): float(agree[labels == c].float().mean()) for c in labels.unique().tolist()}
    return float(agree.float().mean()) if labels.numel() else 0.0, per_class


def screen_payloads(payloads: Mapping[str, CondensedPayload], teacher: nn.Module, card: ModelCard,
                    cfg: ScreenConfig) -> tuple[dict[str, CondensedPayload], dict[str, Any]]:
    """Kept payloads (sites rejected whole are left out) and the report ``{"sites": {...}, ...}``."""
    if not cfg.enabled or not payloads:
        return dict(payloads), {"enabled": cfg.enabled, "sites": {}}
    names = list(payloads)
    sizes = [len(payloads[n]) for n in names]
    pixels = torch.cat([payloads[n].images.float() for n in names])
    labels = torch.cat([payloads[n].labels.long() for n in names])
    site = torch.repeat_interleave(torch.arange(len(names)), torch.tensor(sizes))
    seen, features = _teacher_view(teacher, normalize(pixels, (tuple(card.mean), tuple(card.std))))
    sites = {n: SiteScreen(sizes[i], *_site_agreement(labels[site == i], seen[site == i]))
             for i, n in enumerate(names)}
    keep = torch.ones(labels.shape[0], dtype=torch.bool)
    dp_site = {n: payloads[n].meta.epsilon is not None for n in names}
    for i, name in enumerate(names):
        peers = torch.tensor([sites[n].agreement for n in names if dp_site[n] == dp_site[name]])
        median, kind = peers.median().item(), "DP" if dp_site[name] else "non-DP"
        if sites[name].agreement < cfg.min_relative_agreement * median:
            sites[name].rejected = (f"teacher agreement {sites[name].agreement:.2f} < screen.min_relative_agreement="
                                    f"{cfg.min_relative_agreement} x the median {median:.2f} of the {kind} sites")
            keep[site == i] = False
    private = torch.tensor([payloads[n].meta.epsilon is not None for n in names])[site]
    if cfg.drop_disagreeing:
        keep &= (seen == labels) | private
    outlier = torch.zeros_like(keep)
    if features is not None:  # class medians of the samples still kept, per kind: DP images sit elsewhere
        for kind in (private, ~private):
            judged = keep & kind
            if judged.any():
                outlier[judged] = feature_outliers(features[judged], labels[judged], cfg)
    keep &= ~outlier
    duplicate = near_duplicates(pixels, keep, cfg.duplicate_distance)
    keep &= ~duplicate
    offsets = torch.tensor([0, *sizes]).cumsum(0)
    for i, name in enumerate(names):
        local = slice(int(offsets[i]), int(offsets[i + 1]))
        report = sites[name]
        if report.rejected:
            continue
        dp = payloads[name].meta.epsilon is not None
        report.disagreeing = torch.nonzero(seen[local] != labels[local]).flatten().tolist() \
            if cfg.drop_disagreeing and not dp else []
        report.outliers = torch.nonzero(outlier[local]).flatten().tolist()
        report.duplicates = torch.nonzero(duplicate[local]).flatten().tolist()
        if report.samples and len(report.outliers) / report.samples > cfg.max_site_outlier_share:
            report.rejected = (f"{len(report.outliers)} of {report.samples} samples are feature outliers "
                               f"(> screen.max_site_outlier_share={cfg.max_site_outlier_share})")
            keep[local] = False
    kept = {}
    for i, name in enumerate(names):
        mask = keep[int(offsets[i]):int(offsets[i + 1])]
        if mask.any():
            payload = payloads[name]
            kept[name] = replace(payload, images=payload.images[mask], labels=payload.labels[mask])
    return kept, {"enabled": True, "features": features is not None,
                  "sites": {n: sites[n].summary() for n in names},
                  "kept_samples": int(keep.sum()), "total_samples": int(labels.shape[0])}
