"""``dp-gendd``: GenDD-SKD with its private-data losses under DP (DP-SGD discriminator, noisy SKD targets).

See ``dp_generative.py`` for the mechanisms and the accounting, ``gendd.py`` for the method."""

from __future__ import annotations

from client.condense.base import condensers
from client.condense.dp_generative import DPGenerative
from client.condense.gendd import GenDD


@condensers.register("dp-gendd")
class DPGenDD(DPGenerative, GenDD):
    name = "dp-gendd"
