"""Flower federation settings: node counts, timeouts, acceptance. (Owned by the Flower apps; extend freely.)"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class FederationConfig:
    min_nodes: int = 2

    def validate(self) -> None:
        pass
