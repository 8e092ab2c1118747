"""The distillation loop of Algorithm 1 and its pluggable parts, one module per option behind a registry:

* ``loop``: ``Distiller`` (synthesis + pool + KD with run management), ``CondensedSet``, ``load_condensed``;
* ``pool``: the KD sample pool, the ``samplers`` registry (``uniform``) and the ``replays`` registry (``pool``);
* ``sampling_ssd``: sampler ``ssd`` (SSD-KD); ``replay_generative``: replay ``generative`` (PRE-DFKD-style VAE);
* ``kd_losses``: the ``kd_losses`` registry (``kl``); ``kd_logit_std``: ``kl_logit_std``."""

from server.distillation.loop import (
    CondensedSet,
    Distiller,
    DistillResult,
    condensed_from_payloads,
    load_condensed,
)

__all__ = ["CondensedSet", "DistillResult", "Distiller", "condensed_from_payloads", "load_condensed"]
