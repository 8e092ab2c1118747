"""Server engine settings: inversion, feature alignment, KD, pool, export. (Owned by server/; extend freely.)"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class DistillConfig:
    student: str = "lenet5_half"
    base: str = "fast"
    mode: str = "mi*"

    def validate(self) -> None:
        pass
