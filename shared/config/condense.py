"""Client-side condensation settings. (Owned by client/condense; extend freely.)"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class CondenseConfig:
    method: str = "dm"
    ipc: int = 10

    def validate(self) -> None:
        pass
