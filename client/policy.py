"""The site's privacy policy at work (``shared.config.policy`` defines and validates it).

``site_policy`` builds the policy of a node from its node config (``policy-*`` keys, over the defaults of a
deployed or a simulated site, ``client.task.is_deployed``) and from whatever the code that built the
ClientApp fixed. ``PolicyGuard`` applies it to one condense run, in three places:

1. ``check_request``: the server's request (method, DP or not, IPC, delta, requested epsilon), before any
   data is read; with a lifetime budget, also refuses at once when the ledger says it is spent;
2. ``check_plan``: once the local data is known, the mechanism a full run would use (the calibrated
   noise multiplier, the sample rate, every planned release) and its epsilon, against the per-run bound
   and, composed with the ledger, against the lifetime budget, so a run that could not be released is not
   even started;
2b. ``audit`` (only when the policy sets ``policy-max-mia-auc`` / ``policy-max-memorization``): the
   payload as the server will decode it, audited against the site's training (member) and held-out
   (non-member) images (``shared.privacy.audit``: pixel-space memorisation and the distance attack; no
   shadows, which would cost several condensations), refused above a threshold; its ``audit-*`` figures
   go into the reply's metrics;
3. ``release``: the payload actually produced (its mechanism is at most the planned one: a time budget
   only removes steps), checked again and charged to the ledger under its lock. Only then is the payload
   sent (or written, for ``condex condense``). A run that fails or is refused before this point released
   nothing, so it is not charged; a crash after it leaves a charge for a payload that may never have
   left, which errs on the safe side."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from client.task import is_deployed
from shared.config.condense import CondenseConfig
from shared.config.policy import DEPLOYED, POLICY_PREFIX, SIMULATED, PolicyRefusal, SitePolicy, parse_policy
from shared.data import LabeledImages
from shared.errors import CondexError, DataError
from shared.payload import CondensedPayload
from shared.privacy import LedgerEntry, Mechanism, PrivacyLedger, compose, lifetime_epsilon, plan_privacy
from shared.privacy.ledger import ACCOUNTANT, Charge

# What the code building a ClientApp may fix: policy-* entries, or a function of the node config giving them.
PolicySource = Mapping[str, Any] | Callable[[Mapping[str, Any]], Mapping[str, Any]] | None


def site_policy(node_config: Mapping[str, Any], fixed: PolicySource = None) -> SitePolicy:
    """The node's policy: ``fixed`` entries, overridden by the node config's ``policy-*`` keys, over the
    defaults of its kind (deployed: ``data-dir`` in the node config; simulated: partition ids)."""
    base = dict(fixed(node_config) if callable(fixed) else (fixed or {}))
    values = base | {k: v for k, v in node_config.items() if k.startswith(POLICY_PREFIX)}
    return parse_policy(values, DEPLOYED if is_deployed(node_config) else SIMULATED)


def planned_mechanism(data: LabeledImages, cfg: CondenseConfig) -> Mechanism:
    """The subsampled Gaussian mechanism a full DP run of ``cfg`` on ``data`` uses (what its condenser's
    ``plan_privacy`` computes: same records, same held classes, same number of releases)."""
    from client.condense import get_condenser

    releases = get_condenser(cfg.method).planned_releases(cfg)
    held = int((data.labels.bincount(minlength=data.info.num_classes) > 0).sum())
    plan = plan_privacy(cfg, len(data), held, releases)
    return Mechanism(plan.noise_multiplier, plan.sample_rate, releases * plan.charges_per_release)


class PolicyGuard:
    """One site's policy and ledger, applied to its condense runs (see the module docstring)."""

    def __init__(self, policy: SitePolicy) -> None:
        self.policy = policy
        self.ledger = PrivacyLedger(policy.ledger) if policy.ledger else None

    def check_request(self, cfg: CondenseConfig) -> None:
        self.policy.check_request(cfg)
        if self.ledger is None:
            return
        entries = self.ledger.entries()  # an unreadable ledger refuses every run (ConfigError)
        budget = self.policy.lifetime_epsilon
        if budget is not None:
            spent = lifetime_epsilon(entries, self.policy.lifetime_delta)
            if not spent < budget:
                raise PolicyRefusal("policy-lifetime-epsilon", budget,
                                    f"the site's lifetime budget is spent: epsilon {spent:.4g} at delta "
                                    f"{self.policy.lifetime_delta:g} over {len(entries)} run(s) in its ledger")

    def check_plan(self, data: LabeledImages, cfg: CondenseConfig) -> Mechanism | None:
        """Refuse before condensing when a full run would exceed a bound; the planned mechanism (DP runs)."""
        if not cfg.private:
            return None
        mechanism = planned_mechanism(data, cfg)
        epsilon = compose([mechanism], cfg.delta)
        self.policy.check_epsilon(epsilon, f"the planned epsilon of this run (delta {cfg.delta:g})")
        budget = self.policy.lifetime_epsilon
        if self.ledger is not None and budget is not None:
            entry = LedgerEntry(cfg.method, True, (mechanism,), epsilon, cfg.delta)
            charge = self.ledger.preview(entry, self.policy.lifetime_delta)
            if not charge.after <= budget:
                raise self._lifetime_refusal(charge, epsilon, cfg.delta)
        return mechanism

    def audit(self, payload: CondensedPayload, train: LabeledImages, test: LabeledImages) -> dict[str, float]:
        """Audit ``payload`` when the policy sets a threshold, refuse it above one (``PolicyRefusal``), and
        return the ``audit-*`` metrics for the reply; ``{}`` without a threshold (no audit is run)."""
        if not self.policy.audits:
            return {}
        from shared.privacy.audit import audit_payload

        if len(test) == 0:
            raise DataError("policy-max-mia-auc / policy-max-memorization need held-out images at the site to audit "
                            "against; set data.test_fraction > 0 or give the site a test split")
        report = audit_payload(payload.released().images, train, test)
        self.policy.check_audit(report.max_auc, report.max_share)
        return report.metrics()

    def release(self, payload: CondensedPayload, note: str = "") -> Charge | None:
        """Final check of the produced payload, then the ledger charge (under its lock). Call it right before
        the payload leaves the site; it raises ``PolicyRefusal`` when the payload must not leave."""
        meta, policy = payload.meta, self.policy
        if meta.method not in policy.methods:
            raise PolicyRefusal("policy-methods", policy.methods, f"a {meta.method!r} payload must not leave")
        if policy.max_ipc is not None and meta.ipc > policy.max_ipc:
            raise PolicyRefusal("policy-max-ipc", policy.max_ipc, f"a payload with ipc={meta.ipc} must not leave")
        if meta.epsilon is None:
            if policy.require_dp:
                raise PolicyRefusal("policy-require-dp", True, f"the {meta.method!r} payload is not DP")
            entry = LedgerEntry(meta.method, False, note=note)
            run_epsilon, run_delta = float("inf"), 0.0
        else:
            entry = self._dp_entry(payload, note)
            run_epsilon, run_delta = meta.epsilon, meta.delta or 0.0
            policy.check_epsilon(run_epsilon, "the epsilon this run spent")
            if policy.max_delta is not None and not run_delta <= policy.max_delta:
                raise PolicyRefusal("policy-max-delta", policy.max_delta, f"the payload's delta={run_delta:g} is "
                                    "above this site's bound")
        if self.ledger is None:
            if policy.lifetime_epsilon is not None:  # validate_policy makes this unreachable; never release unbounded
                raise CondexError("policy-lifetime-epsilon is set without policy-ledger")
            return None
        return self.ledger.charge(entry, policy.lifetime_delta, policy.lifetime_epsilon,
                                  refuse=lambda c: self._lifetime_refusal(c, run_epsilon, run_delta))

    def _dp_entry(self, payload: CondensedPayload, note: str) -> LedgerEntry:
        meta = payload.meta
        if meta.noise_multiplier is None or meta.sample_rate is None or meta.dp_steps is None:
            raise CondexError(f"a {meta.method} payload without its noise multiplier, sample rate and steps cannot "
                              "be charged to the privacy ledger; condense it again (these fields stay at the site)")
        if meta.accountant != ACCOUNTANT:
            raise CondexError(f"condense.accountant={meta.accountant!r}: the privacy ledger composes "
                              f"{ACCOUNTANT!r} runs only")
        mechanism = Mechanism(float(meta.noise_multiplier), float(meta.sample_rate), int(meta.dp_steps))
        return LedgerEntry(meta.method, True, (mechanism,), meta.epsilon, meta.delta, note)

    def _lifetime_refusal(self, charge: Charge, epsilon: float, delta: float) -> PolicyRefusal:
        """The reason goes to the server: it names the budget and what was spent, not the ledger's path."""
        run = "a non-DP run (unbounded epsilon)" if epsilon == float("inf") else \
            f"this run (epsilon {epsilon:.4g} at delta {delta:g})"
        return PolicyRefusal(
            "policy-lifetime-epsilon", self.policy.lifetime_epsilon,
            f"{run} would bring the site's lifetime epsilon to {charge.after:.4g} at delta "
            f"{self.policy.lifetime_delta:g} ({charge.before:.4g} spent over {charge.runs} run(s) recorded in the "
            "site's ledger)")
