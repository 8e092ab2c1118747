"""Client-side condensation: a site turns its private images into a few synthetic samples per class.

Methods (one module each, registered in ``condensers``): ``dm`` (distribution matching, CPU default),
``gm`` (gradient matching with DSA), ``real`` (few-shot real samples), ``dp-dm``, ``dp-dos`` and ``dp-gm``
(differentially private, Opacus RDP accounting), and the generative ``d2m`` and ``gendd`` (the payload is a
conditional generator) with their DP variants ``dp-d2m`` and ``dp-gendd``. ``condense(data, cfg)`` runs
``cfg.method``.
"""

from client.condense import d2m, dm, dp_d2m, dp_dm, dp_dos, dp_gendd, dp_gm, gendd, gm, real  # noqa: F401  (registry)
from client.condense.base import Condenser, condense, condenser_names, condensers, get_condenser

__all__ = ["Condenser", "condense", "condenser_names", "condensers", "get_condenser"]
