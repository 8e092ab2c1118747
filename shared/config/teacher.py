"""How the server's teacher is trained or found. (Owned by the teacher module; extend freely.)"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TeacherConfig:
    checkpoint: str = "assets/teachers/fashion_mnist"
    arch: str = "resnet8"

    def validate(self) -> None:
        pass
