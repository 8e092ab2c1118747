"""Client-side condensation: a site turns its private images into a few synthetic samples per class.

Methods (one module each, registered in ``condensers``): ``dm`` (distribution matching, CPU default),
``gm`` (gradient matching with DSA), ``real`` (few-shot real samples), ``dp-dm`` and ``dp-gm``
(differentially private, Opacus RDP accounting). ``condense(data, cfg)`` runs ``cfg.method``.
"""

from client.condense import dm, dp_dm, dp_gm, gm, real  # noqa: F401  (fill the registry)
from client.condense.base import Condenser, condense, condenser_names, condensers, get_condenser

__all__ = ["Condenser", "condense", "condenser_names", "condensers", "get_condenser"]
