"""The data site's Flower ClientApp (Message API).

* ``query.condense``: check the request against the site's privacy policy (``client.policy``), load this
  node's data (``client.task``; a site's folders are labelled by the teacher's class names in the query),
  condense its training part with the requested method / IPC / privacy
  budget (``client.condense``), charge the run to the site's privacy ledger and reply with the payload
  (``shared.wire``: ArrayRecord + ConfigRecord metadata + MetricRecord with epsilon and time; the local
  train/test counts only for non-DP payloads; with a ``policy-max-mia-auc`` / ``policy-max-memorization``
  threshold, the payload is audited first and refused above it, and its ``audit-*`` figures are sent).
* ``evaluate``: rebuild the student the server sent and report its accuracy on the node's held-out data
  (unless the policy says ``policy-evaluate=false``; a DP-only site leaves out the number of examples).

The site's policy comes from the node config (``policy-*`` keys, ``shared.config.policy``) and from the
code that builds the app (``build_app(policy=...)``), never from the run config or the server's request.
A request outside it gets an error reply with code ``ERR_POLICY`` whose reason names the policy key and
its value (``PolicyRefusal: policy-max-epsilon=10: ...``).

Configuration = the composed defaults (``configs/``) + the run config (``[tool.flwr.app.config]`` and
``flwr run --run-config``) + the server's per-request overrides. A node that cannot load its data or is
asked for something invalid replies with a Flower ``Error`` whose reason names the problem; the run goes
on with the other nodes.

DP randomness is not configurable: ``dp-dm`` / ``dp-gm`` draw their Poisson masks and noise from
``shared.privacy.secret_generator`` (OS entropy) whatever the run config or the server's request say (no
config key selects the source; unknown keys are refused). A request's ``condense.seed`` only fixes the
public, data-independent draws, and a DP reply carries no seed: ``condense_content`` refuses to send a DP
payload whose metadata does not say ``noise_source="os-entropy"``."""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Mapping
from typing import Any

from flwr.app import Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client.policy import PolicyGuard, PolicySource, site_policy
from client.task import LocalData, load_local_data
from shared import wire
from shared.config import CondexConfig, config_for_run
from shared.config.policy import POLICY_REFUSAL_CODE, PolicyRefusal, SitePolicy, default_policy
from shared.errors import CondexError, ConfigError, DataError
from shared.payload import DP_PRIVATE_FIELDS, SECRET_NOISE_SOURCE, CondensedPayload

log = logging.getLogger("condex.client")

# Error codes in replies (Flower's own codes are < 100).
ERR_DATA = 101  # the node's data cannot be found or read
ERR_CONFIG = 102  # the requested configuration is invalid
ERR_CONDEX = 103  # another condex error (payload, checkpoint, ...)
ERR_POLICY = POLICY_REFUSAL_CODE  # 104: the request is outside the site's privacy policy
ERR_INTERNAL = 199  # an unexpected exception (a bug): type and message are in the reason


def node_config(context: Context, request: Mapping[str, Any] | None = None,
                overrides: Mapping[str, Any] | None = None) -> CondexConfig:
    """The run config's setting composed (cached: a simulation worker serves many nodes), then the run config's
    entries, then programmatic overrides, then the server's request; validated (``config_for_run``)."""
    return config_for_run(context.run_config, overrides, request)


def error_reply(msg: Message, exc: BaseException) -> Message:
    """A Flower error reply whose reason says what failed and how to fix it."""
    if isinstance(exc, PolicyRefusal):
        code = ERR_POLICY
    elif isinstance(exc, DataError):
        code = ERR_DATA
    elif isinstance(exc, ConfigError):
        code = ERR_CONFIG
    elif isinstance(exc, CondexError):
        code = ERR_CONDEX
    else:
        code = ERR_INTERNAL
        log.error("unexpected error while handling %s:\n%s", msg.metadata.message_type, traceback.format_exc())
    log.warning("replying with error %d: %s: %s", code, type(exc).__name__, exc)
    return Message(Error(code=code, reason=f"{type(exc).__name__}: {exc}"), reply_to=msg)


def handle_condense(msg: Message, context: Context, overrides: Mapping[str, Any] | None = None,
                    policy: PolicySource = None) -> Message:
    """Check the request against the site's policy, condense the local training data and reply."""
    try:
        cfg = node_config(context, wire.request_from_content(msg.content), overrides)
        guard = PolicyGuard(site_policy(context.node_config, policy))
        log.info("%s", guard.policy.describe())
        guard.check_request(cfg.condense)
        data = load_local_data(context.node_config, cfg.data, wire.expected_classes(msg.content),
                               wire.expected_stats(msg.content), wire.expected_class_names(msg.content))
        return Message(condense_content(data, cfg, guard), reply_to=msg)
    except Exception as exc:  # every failure becomes an error reply, never a dead node
        return error_reply(msg, exc)


def condense_content(data: LocalData, cfg: CondexConfig, guard: PolicyGuard | None = None) -> RecordDict:
    """Run the configured condenser on the node's training part and encode the reply. ``guard``: the site's
    policy (default: a simulated site's, which allows every request) checks the planned run before it
    starts and charges the payload to the ledger right before the reply is returned."""
    from client.condense import condense as run_condenser

    guard = guard or PolicyGuard(default_policy("simulated"))
    if len(data.train) == 0:
        raise DataError(f"{data.source}: no training images at this node")
    guard.check_request(cfg.condense)
    guard.check_plan(data.train, cfg.condense)
    start = time.perf_counter()
    payload = run_condenser(data.train, cfg.condense, progress=False)
    seconds = time.perf_counter() - start
    check_secret_noise(payload, cfg.condense.private)
    dp = payload.meta.epsilon is not None
    metrics: dict[str, float | None] = {
        "condense-seconds": seconds, "condense-finished": time.time(),  # site clock: concurrency in the report
        "num-samples": len(payload), "epsilon": payload.meta.epsilon, "delta": payload.meta.delta,
    }
    if not dp:  # exact counts are not covered by a DP budget: a DP reply leaves them out
        metrics |= {"local-train": len(data.train), "local-test": len(data.test)}
    # a policy audit threshold: audit against the held-out part, refuse above it, else report the figures
    metrics |= guard.audit(payload, data.train, data.test)
    content = wire.payload_to_content(payload, metrics, {"source": data.source})
    check_nothing_private(content, dp)
    guard.release(payload, note=data.source)
    log.info("condensed %d local images into %d (%s, IPC %d) in %.1fs", len(data.train), len(payload),
             payload.meta.method, payload.meta.ipc, seconds)
    return content


def check_nothing_private(content: RecordDict, dp: bool) -> None:
    """Never send a DP reply that carries class counts, local record counts or the sampling parameters."""
    if not dp:
        return
    meta = dict(content.config_records[wire.PAYLOAD_META])
    metrics = wire.node_metrics(content)
    sent = [k for k in DP_PRIVATE_FIELDS if k in meta] + [k for k in ("local-train", "local-test") if k in metrics]
    if sent:
        raise CondexError(f"refusing to send a DP payload with {', '.join(sent)}: not covered by its privacy budget")


def check_secret_noise(payload: CondensedPayload, private: bool) -> None:
    """Never send a DP payload unless its noise came from OS entropy and it carries no seed."""
    meta = payload.meta
    if (private or meta.epsilon is not None) and (meta.noise_source != SECRET_NOISE_SOURCE or meta.seed is not None):
        raise CondexError(f"refusing to send a {meta.method} payload with noise_source={meta.noise_source!r} and "
                          f"seed={meta.seed!r}: DP noise must come from OS entropy ({SECRET_NOISE_SOURCE!r})")


def handle_evaluate(msg: Message, context: Context, overrides: Mapping[str, Any] | None = None,
                    policy: PolicySource = None) -> Message:
    """Accuracy of the received student on this node's held-out data (if the site's policy allows it)."""
    try:
        from shared.train import evaluate as accuracy_of

        cfg = node_config(context, wire.request_from_content(msg.content), overrides)
        site: SitePolicy = site_policy(context.node_config, policy)
        site.check_evaluate()
        model, card = wire.student_from_content(msg.content)
        stats = (tuple(card.mean), tuple(card.std))
        data = load_local_data(context.node_config, cfg.data, card.num_classes, stats, card.class_names)
        if len(data.test) == 0:
            raise DataError(f"{data.source}: no held-out images; set data.test_fraction > 0 or add a test split")
        acc = accuracy_of(model, data.test, stats=stats)
        values: dict[str, float] = {"accuracy": acc}
        if not site.require_dp:  # a DP-only site does not send the exact size of its held-out split
            values["num-examples"] = len(data.test)
        record = MetricRecord(values)
        return Message(RecordDict({wire.EVAL_METRICS: record}), reply_to=msg)
    except Exception as exc:  # every failure becomes an error reply, never a dead node
        return error_reply(msg, exc)


def build_app(overrides: Mapping[str, Any] | None = None, policy: PolicySource = None) -> ClientApp:
    """The ClientApp; ``overrides`` (``section.key`` entries) win over the run config (simulations, tests).
    ``policy``: ``policy-*`` entries (or a function of the node config returning them) for sites whose node
    config cannot carry them, e.g. simulated nodes; the node config's own ``policy-*`` keys win."""
    client_app = ClientApp()
    fixed = dict(overrides or {})

    @client_app.query("condense")
    def condense(msg: Message, context: Context) -> Message:
        return handle_condense(msg, context, fixed, policy)

    @client_app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        return handle_evaluate(msg, context, fixed, policy)

    return client_app


app = build_app()
