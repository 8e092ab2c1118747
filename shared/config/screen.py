"""``screen``: the server's filter of poisoned payloads before distillation (``server/screening.py``).

A payload's labels are checked against the teacher (a label-flipped or noise site is confirmed on about
1/num_classes of its samples), its samples' teacher features against the robust per-class spread of all
sites, and its pixels for near-copies. Figures for honest and poisoned payloads: docs/robustness.md."""

from __future__ import annotations

from dataclasses import dataclass

from shared.config.checks import check_types
from shared.errors import ConfigError


@dataclass
class ScreenConfig:
    enabled: bool = True
    min_relative_agreement: float = 0.5  # reject a site whose teacher agreement is below this x the sites' median
    drop_disagreeing: bool = True  # drop each non-DP sample whose teacher label is not the payload's label
    outlier_z: float = 3.5  # robust z-score of a sample's teacher-feature distance to its class median
    max_site_outlier_share: float = 0.5  # a site with more outliers than this is rejected whole
    duplicate_distance: float = 0.01  # RMS pixel distance under which two samples are near-duplicates
    min_class_samples: int = 5  # outlier statistics need this many samples of a class (across sites)

    def validate(self) -> ScreenConfig:
        check_types(self, "screen")
        for name in ("min_relative_agreement", "max_site_outlier_share"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"screen.{name}={getattr(self, name)} must be in [0, 1]")
        if self.outlier_z <= 0:
            raise ConfigError(f"screen.outlier_z={self.outlier_z} must be > 0 (3.5 is the usual robust cut)")
        if self.duplicate_distance < 0:
            raise ConfigError(f"screen.duplicate_distance={self.duplicate_distance} must be >= 0 (0 turns it off)")
        if self.min_class_samples < 2:
            raise ConfigError(f"screen.min_class_samples={self.min_class_samples} must be >= 2")
        return self
