"""A data site's privacy policy: what the site agrees to condense and send, whatever the server asks for.

The policy is *site* configuration, never run configuration: it comes from the SuperNode's
``--node-config`` (``policy-*`` keys), from the code that builds the ClientApp, or from ``condex
condense --policy-*`` flags. It is not a section of ``CondexConfig``, so neither the run config nor the
server's request can set or relax it (their ``policy.*`` keys are unknown config keys).

| key | meaning | deployed default | simulated default |
|---|---|---|---|
| ``policy-methods`` | condensation methods the site runs (comma-separated) | all | all |
| ``policy-require-dp`` | refuse every non-DP method (``dm``, ``gm``, ``real``) | true | false |
| ``policy-max-epsilon`` | largest epsilon of one DP run | 10 | none |
| ``policy-max-delta`` | largest delta of one DP run | 1e-5 | none |
| ``policy-max-ipc`` | most images per class in one payload | none | none |
| ``policy-lifetime-epsilon`` | total epsilon over every run recorded in the ledger | none | none |
| ``policy-lifetime-delta`` | the delta at which the lifetime epsilon is computed | 1e-5 | 1e-5 |
| ``policy-ledger`` | the file that records every released run (needed for a lifetime budget) | none | none |
| ``policy-evaluate`` | answer ``evaluate`` requests (accuracy on held-out data, not DP) | true | true |
| ``policy-max-mia-auc`` | audit each payload; refuse it when a membership attack's AUC exceeds this | none | none |
| ``policy-max-memorization`` | audit each payload; refuse it when a larger share of it is memorised | none | none |
| ``policy-audit`` | audit each payload and send its ``audit-*`` figures even without a threshold | false | true |

With an audit threshold, or ``policy-audit=true``, the site runs ``shared.privacy.audit`` on each payload
before sending it (training vs held-out images; "memorised": closer to a training image than 95% of held-out
images are).

"none" (the string) means no bound. A key left out takes the default of the kind of site: *deployed*
(its own data, ``data-dir`` in the node config, or ``condex condense --dataset folder``) or *simulated*
(a partition of a public dataset). Every value is validated (``ConfigError`` naming the key and the fix);
an unknown ``policy-*`` key is refused too, so a typo never silently drops a bound.

A request outside the policy raises ``PolicyRefusal``, whose message starts with the policy key and its
value (``policy-max-epsilon=10: ...``); the ClientApp turns it into an error reply with code
``POLICY_REFUSAL_CODE``, which the server lists as *refused* in its report."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from shared.config.condense import METHODS, CondenseConfig
from shared.errors import CondexError, ConfigError

POLICY_PREFIX = "policy-"
POLICY_REFUSAL_CODE = 104  # Flower error code of a policy refusal (condex codes are 101..199)
SIMULATED, DEPLOYED = "simulated", "deployed"
NO_BOUND = "none"
DP_METHODS = tuple(m for m in METHODS if m.startswith("dp-"))


class PolicyRefusal(CondexError):
    """A request the site's policy does not allow; ``key``/``value`` name the policy field that refused it."""

    def __init__(self, key: str, value: Any, message: str) -> None:
        self.key, self.value = key, value
        super().__init__(f"{key}={format_value(value)}: {message}")


@dataclass(frozen=True)
class SitePolicy:
    """The validated policy of one site (see the module docstring for the keys and defaults)."""

    methods: tuple[str, ...] = METHODS
    require_dp: bool = False
    max_epsilon: float | None = None
    max_delta: float | None = None
    max_ipc: int | None = None
    lifetime_epsilon: float | None = None
    lifetime_delta: float = 1e-5
    ledger: str | None = None
    evaluate: bool = True
    max_mia_auc: float | None = None  # shared.privacy.audit: AuditReport.max_auc
    max_memorization: float | None = None  # shared.privacy.audit: AuditReport.max_share
    # audit every payload even without a threshold, so the server's report shows each site's figures (the
    # simulation's default: its sites hold public data; a deployed site opts in, the figures are not DP)
    audit: bool = False
    kind: str = SIMULATED  # which defaults filled the keys the site left out

    # ---- the checks ------------------------------------------------------------------------------------
    def check_request(self, cfg: CondenseConfig) -> None:
        """Refuse a condense request (the validated ``condense`` section) that the policy does not allow.
        Epsilon is checked here only when the request names a target; a fixed noise multiplier is checked
        once the site knows its data (``check_epsilon`` on the planned run) and again before release."""
        if cfg.method not in self.methods:
            raise PolicyRefusal("policy-methods", self.methods, f"condense.method={cfg.method!r} is not allowed at "
                                f"this site; it runs only {', '.join(self.methods)}")
        if self.require_dp and not cfg.private:
            raise PolicyRefusal("policy-require-dp", True, f"condense.method={cfg.method!r} is not differentially "
                                f"private; this site sends only DP payloads ({', '.join(self._dp_methods())})")
        if self.max_ipc is not None and cfg.ipc > self.max_ipc:
            raise PolicyRefusal("policy-max-ipc", self.max_ipc, f"condense.ipc={cfg.ipc} asks for more images per "
                                f"class than this site sends (at most {self.max_ipc})")
        if not cfg.private:
            if self.lifetime_epsilon is not None:
                raise PolicyRefusal("policy-lifetime-epsilon", self.lifetime_epsilon,
                                    f"condense.method={cfg.method!r} is not DP: its epsilon is unbounded and would "
                                    "exhaust the site's lifetime budget")
            return
        if self.max_delta is not None and cfg.delta > self.max_delta:
            raise PolicyRefusal("policy-max-delta", self.max_delta,
                                f"condense.delta={cfg.delta:g} is above this site's bound {self.max_delta:g}")
        if cfg.epsilon > 0:
            self.check_epsilon(cfg.epsilon, "condense.epsilon")

    def check_epsilon(self, epsilon: float, what: str) -> None:
        """Refuse one run whose epsilon (requested, planned or spent) exceeds ``max_epsilon``."""
        if self.max_epsilon is not None and not epsilon <= self.max_epsilon:
            raise PolicyRefusal("policy-max-epsilon", self.max_epsilon,
                                f"{what}={epsilon:.4g} is above this site's per-run bound {self.max_epsilon:g}")

    def check_evaluate(self) -> None:
        if not self.evaluate:
            raise PolicyRefusal("policy-evaluate", False, "this site does not evaluate students on its held-out "
                                "data (an accuracy on private data is not a DP release)")

    @property
    def audits(self) -> bool:
        """Whether the site audits each payload before sending it (``policy-audit`` or a threshold is set)."""
        return self.audit or self.max_mia_auc is not None or self.max_memorization is not None

    def check_audit(self, auc: float | None, share: float | None) -> None:
        """Refuse a payload whose audit (``AuditReport.max_auc`` / ``max_share``) exceeds a threshold."""
        if self.max_mia_auc is not None and (auc is None or not auc <= self.max_mia_auc):
            raise PolicyRefusal("policy-max-mia-auc", self.max_mia_auc,
                                f"the payload's strongest membership-inference attack has AUC {_fmt(auc)} on the "
                                "site's training vs held-out images; it must not leave (condense with a DP method "
                                "or a smaller epsilon)")
        if self.max_memorization is not None and (share is None or not share <= self.max_memorization):
            raise PolicyRefusal("policy-max-memorization", self.max_memorization,
                                f"{_pct(share)} of the payload's images are closer to a training image than 95% of "
                                "held-out images are; it must not leave (condense with a DP method or init=noise)")

    def _dp_methods(self) -> list[str]:
        return [m for m in self.methods if m in DP_METHODS]

    # ---- description -----------------------------------------------------------------------------------
    def to_node_config(self) -> dict[str, str]:
        """The policy as ``policy-*`` keys (what a log line or the CLI prints)."""
        return {key: format_value(getattr(self, name)) for key, name in ALL_KEYS.items()}

    def describe(self) -> str:
        return f"{self.kind} site policy: " + " ".join(f"{k}={v}" for k, v in self.to_node_config().items())


# node-config key -> SitePolicy field. The audit keys are kept apart: `condex condense` mirrors KEYS as flags
# and does not audit; `condex audit` takes the thresholds (AUDIT_KEYS) and always audits; every parser takes all.
AUDIT_FIELDS = ("max_mia_auc", "max_memorization")
KEYS = {f"{POLICY_PREFIX}{f.name.replace('_', '-')}": f.name for f in fields(SitePolicy)
        if f.name not in ("kind", "audit", *AUDIT_FIELDS)}
AUDIT_KEYS = {f"{POLICY_PREFIX}{name.replace('_', '-')}": name for name in AUDIT_FIELDS}
ALL_KEYS = KEYS | AUDIT_KEYS | {f"{POLICY_PREFIX}audit": "audit"}


def default_policy(kind: str) -> SitePolicy:
    """The policy of a site that sets no ``policy-*`` key: deployed sites send only DP payloads with epsilon
    <= 10 and delta <= 1e-5 per run; simulated sites (public data) allow every method and audit every payload,
    so the default job's report shows each site's audit figures."""
    if kind == DEPLOYED:
        return SitePolicy(require_dp=True, max_epsilon=10.0, max_delta=1e-5, kind=DEPLOYED)
    if kind == SIMULATED:
        return SitePolicy(audit=True, kind=SIMULATED)
    raise ConfigError(f"site kind {kind!r} must be {DEPLOYED!r} or {SIMULATED!r}")


def parse_policy(values: Mapping[str, Any], kind: str, spell: str = "node config") -> SitePolicy:
    """``policy-*`` entries (node config, or the CLI's flags as the same keys) over ``default_policy(kind)``.
    Keys without the ``policy-`` prefix are ignored (the node config also holds ``data-dir`` and the like).
    ``spell`` says where the values came from in error messages (``node config`` or ``condex condense``)."""
    base = default_policy(kind)
    changes: dict[str, Any] = {}
    for key, value in values.items():
        if not key.startswith(POLICY_PREFIX):
            continue
        if key not in ALL_KEYS:
            raise ConfigError(f"{spell}: unknown policy key {key!r}; known keys: {', '.join(ALL_KEYS)}")
        name = ALL_KEYS[key]
        changes[name] = _PARSERS[name](_where(spell, key), value)
    policy = SitePolicy(**{f.name: getattr(base, f.name) for f in fields(SitePolicy)} | changes)
    return validate_policy(policy, spell)


def validate_policy(policy: SitePolicy, spell: str = "node config") -> SitePolicy:
    """Check every field of an already built policy (types, ranges) and the combinations."""
    for name, parse in _PARSERS.items():
        parse(_where(spell, _key(name)), getattr(policy, name))
    if policy.require_dp and not policy._dp_methods():
        raise ConfigError(f"{spell}: policy-require-dp=true but policy-methods={format_value(policy.methods)} holds "
                          f"no DP method; allow {' or '.join(DP_METHODS)}, or set policy-require-dp=false")
    if policy.lifetime_epsilon is not None and policy.ledger is None:
        raise ConfigError(f"{spell}: policy-lifetime-epsilon={policy.lifetime_epsilon:g} needs policy-ledger, the "
                          "file where the site records what it has spent "
                          "(e.g. policy-ledger=\"/srv/site/ledger.json\")")
    if policy.kind not in (DEPLOYED, SIMULATED):
        raise ConfigError(f"policy kind={policy.kind!r} must be {DEPLOYED!r} or {SIMULATED!r}")
    return policy


def format_value(value: Any) -> str:
    if value is None:
        return NO_BOUND
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple | list):
        return ",".join(str(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


# ---- value parsers: (where, value) -> typed value, ConfigError naming the key otherwise ------------------
def _key(name: str) -> str:
    return f"{POLICY_PREFIX}{name.replace('_', '-')}"


def _where(spell: str, key: str) -> str:
    return f"{spell} --{key}" if spell.startswith("condex ") else f"{spell} {key}"


def _none(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value.strip().lower() == NO_BOUND)


def _number(where: str, value: Any, fix: str) -> float:
    if isinstance(value, bool):
        raise ConfigError(f"{where}={value!r} is a boolean; {fix}")
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise ConfigError(f"{where}={value!r} is not a number; {fix}") from None
    if not isinstance(value, int | float):
        raise ConfigError(f"{where}={value!r} must be a number; {fix}")
    value = float(value)
    if not math.isfinite(value):
        raise ConfigError(f"{where}={value!r} must be finite; {fix}")
    return value


def _methods(where: str, value: Any) -> tuple[str, ...]:
    fix = f"list methods separated by commas, from {', '.join(METHODS)} (e.g. \"dp-dm,dp-gm\")"
    if isinstance(value, str):
        items = [v.strip() for v in value.split(",")]
    elif isinstance(value, list | tuple):
        items = list(value)
    else:
        raise ConfigError(f"{where}={value!r} must be a string; {fix}")
    if not all(isinstance(v, str) for v in items) or not items or any(v == "" for v in items):
        raise ConfigError(f"{where}={value!r} must name at least one method with no empty entry; {fix}")
    unknown = [v for v in items if v not in METHODS]
    if unknown:
        raise ConfigError(f"{where}={value!r}: unknown method(s) {', '.join(unknown)}; {fix}")
    return tuple(dict.fromkeys(items))


def _bool(where: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise ConfigError(f"{where}={value!r} must be true or false (a boolean, not 0/1)")


def _epsilon(where: str, value: Any) -> float | None:
    if _none(value):
        return None
    fix = f"set a finite epsilon > 0, e.g. 10, or {NO_BOUND} for no bound"
    number = _number(where, value, fix)
    if not number > 0:
        raise ConfigError(f"{where}={value!r} must be > 0; {fix}")
    return number


def _delta(where: str, value: Any) -> float:
    fix = "set a delta in (0, 1), e.g. 1e-5 (well below 1 / the number of local records)"
    number = _number(where, value, fix)
    if not 0.0 < number < 1.0:
        raise ConfigError(f"{where}={value!r} must be in (0, 1); {fix}")
    return number


def _max_delta(where: str, value: Any) -> float | None:
    return None if _none(value) else _delta(where, value)


def _ipc(where: str, value: Any) -> int | None:
    if _none(value):
        return None
    fix = f"set an integer >= 1, e.g. 50, or {NO_BOUND} for no bound"
    number = _number(where, value, fix)
    if not number.is_integer() or number < 1:
        raise ConfigError(f"{where}={value!r} must be an integer >= 1; {fix}")
    return int(number)


def _fraction(where: str, value: Any) -> float | None:
    if _none(value):
        return None
    fix = f"set a fraction in [0, 1], e.g. 0.6, or {NO_BOUND} for no bound"
    number = _number(where, value, fix)
    if not 0.0 <= number <= 1.0:
        raise ConfigError(f"{where}={value!r} must be in [0, 1]; {fix}")
    return number


def _fmt(value: float | None) -> str:
    return "unmeasured" if value is None else f"{value:.3g}"


def _pct(value: float | None) -> str:
    return "unmeasured" if value is None else f"{100 * value:.1f}%"


def _ledger(where: str, value: Any) -> str | None:
    if _none(value) or value == "":
        return None
    if not isinstance(value, str):
        raise ConfigError(f"{where}={value!r} must be a file path (a string), e.g. \"/srv/site/ledger.json\"")
    return value


_PARSERS = {
    "methods": _methods, "require_dp": _bool, "max_epsilon": _epsilon, "max_delta": _max_delta, "max_ipc": _ipc,
    "lifetime_epsilon": _epsilon, "lifetime_delta": _delta, "ledger": _ledger, "evaluate": _bool,
    "max_mia_auc": _fraction, "max_memorization": _fraction, "audit": _bool,
}
assert set(_PARSERS) == set(ALL_KEYS.values())
