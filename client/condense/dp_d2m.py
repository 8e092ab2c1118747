"""``dp-d2m``: D2M with its private-data losses under DP (DP-SGD discriminator, noisy matching targets).

See ``dp_generative.py`` for the mechanisms and the accounting, ``d2m.py`` for the method."""

from __future__ import annotations

from client.condense.base import condensers
from client.condense.d2m import D2M
from client.condense.dp_generative import DPGenerative


@condensers.register("dp-d2m")
class DPD2M(DPGenerative, D2M):
    name = "dp-d2m"
