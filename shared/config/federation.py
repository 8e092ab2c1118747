"""Flower federation settings: how long the server waits for data sites, what it accepts, what it evaluates.

Used by the ServerApp (``server/flower/app.py``); every field is a ``federation.<kebab-key>`` entry of
``[tool.flwr.app.config]`` so ``flwr run . --run-config "federation.min-nodes=3"`` overrides it."""

from __future__ import annotations

import math
from dataclasses import dataclass

from shared.config.checks import check_types
from shared.errors import ConfigError


@dataclass
class FederationConfig:
    min_nodes: int = 2  # connected SuperNodes needed before the condense query goes out
    max_nodes: int = 0  # > 0: query at most this many of the connected nodes (sorted by id); 0 = all
    node_wait_timeout_s: float = 300.0  # give up (ConfigError in the report) if min_nodes never connect
    reply_timeout_s: float = 3600.0  # wait at most this long for condensed payloads (slow nodes are dropped)
    min_payload_fraction: float = 0.5  # accepted payloads / queried nodes needed to go on with distillation
    max_payload_bytes: int = 64 * 1024 * 1024  # a reply larger than this is rejected before decoding
    federated_eval: bool = True  # send the exported student to the nodes for evaluation on their held-out data
    eval_timeout_s: float = 600.0
    message_ttl_s: float = 0.0  # Flower message TTL; 0 = reply timeout + 60 s
    sim_client_cpus: int = 1  # simulations.run only: CPUs Ray reserves per simulated ClientApp; sites condense
    #                           with condense.threads (1), so 1 lets two sites condense at a time on 2 cores
    sim_client_gpus: float = 0.0  # simulations.run only: GPU share Ray reserves per simulated ClientApp (0.5: two
    #                               sites per GPU); > 0 needs a visible CUDA GPU (`flwr run`: client-resources-num-gpus)

    def validate(self) -> None:
        check_types(self, "federation")
        if not isinstance(self.min_nodes, int) or self.min_nodes < 1:
            raise ConfigError(f"federation.min_nodes={self.min_nodes!r} must be an integer >= 1")
        if not isinstance(self.max_nodes, int) or self.max_nodes < 0:
            raise ConfigError(f"federation.max_nodes={self.max_nodes!r} must be an integer >= 0 (0 = all nodes)")
        if self.max_nodes and self.max_nodes < self.min_nodes:
            raise ConfigError(
                f"federation.max_nodes={self.max_nodes} is below federation.min_nodes={self.min_nodes}; "
                "raise max_nodes or set it to 0"
            )
        for name in ("node_wait_timeout_s", "reply_timeout_s", "eval_timeout_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"federation.{name}={value!r} must be a finite number of seconds > 0")
        if not (math.isfinite(self.message_ttl_s) and self.message_ttl_s >= 0):
            raise ConfigError(f"federation.message_ttl_s={self.message_ttl_s!r} must be >= 0 (0 = automatic)")
        if not 0.0 < self.min_payload_fraction <= 1.0:
            raise ConfigError(
                f"federation.min_payload_fraction={self.min_payload_fraction} must be in (0, 1]; e.g. 0.5 goes on "
                "when half of the queried nodes sent a valid payload"
            )
        if not isinstance(self.sim_client_cpus, int) or self.sim_client_cpus < 1:
            raise ConfigError(f"federation.sim_client_cpus={self.sim_client_cpus!r} must be an integer >= 1")
        if not 0.0 <= self.sim_client_gpus <= 64.0:
            raise ConfigError(f"federation.sim_client_gpus={self.sim_client_gpus!r} must be in [0, 64] (a GPU share "
                              "per simulated site, e.g. 0.5; 0 = CPU only)")
        if not isinstance(self.max_payload_bytes, int) or self.max_payload_bytes < 1024:
            raise ConfigError(f"federation.max_payload_bytes={self.max_payload_bytes!r} must be an integer >= 1024")

    @property
    def ttl(self) -> float:
        """Flower TTL for the condense query: long enough for the reply to come back within the timeout."""
        return self.message_ttl_s or self.reply_timeout_s + 60.0
