"""The server's Flower ServerApp (Message API): one-shot condense -> distil -> evaluate.

1. wait until ``federation.min_nodes`` SuperNodes are connected (at most ``federation.node_wait_timeout_s``);
2. send ``query.condense`` to every connected node (up to ``federation.max_nodes``) and gather the replies
   for at most ``federation.reply_timeout_s``;
3. decode and strictly validate each payload (``shared.payload.validate_payload`` against the teacher's
   geometry and the requested method / IPC / privacy budget); a node that failed, timed out or sent a
   malformed payload, or refused the request under its privacy policy, is logged with its id and reason
   and listed in the report; the run goes on;
4. go on only if at least ``federation.min_payload_fraction`` of the queried nodes sent a valid payload;
5. run the engine (guided model inversion + KD, ``server.distillation``) and export the student (``server.export``);
6. send the student to the nodes that answered for federated evaluation (``evaluate``);
7. write ``report.json`` + ``report.md`` (``server.flower.report``) into the run directory and print the table.

Configuration is the composed defaults (``configs/``) overridden by the run config (``[tool.flwr.app.config]``
and ``flwr run . --run-config "condense.ipc=5"``)."""

from __future__ import annotations

import copy
import json
import os
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from flwr.app import Context, Message
from flwr.serverapp import Grid, ServerApp
from torch import nn

from server.distillation.watch import check_tensorboard
from server.flower.report import (
    ACCEPTED,
    FAILED,
    REFUSED,
    REJECTED,
    TIMEOUT,
    NodeOutcome,
    RunReport,
    write_site_plots,
)
from shared import wire
from shared.checkpoint import ModelCard, load_checkpoint
from shared.config import DEFAULT_SETTING, CondexConfig, config_for_run, flower_values, load_config, to_flat
from shared.config.policy import POLICY_REFUSAL_CODE
from shared.errors import CheckpointError, CondexError, ConfigError, DataError, PayloadError
from shared.payload import CondensedPayload, PayloadSpec, validate_payload
from shared.privacy.notice import non_dp_warning

PROJECT_ROOT = Path(__file__).resolve().parents[2]  # the checkout (server/flower/app.py)
POLL_INTERVAL_S = 1.0
PROGRESS_EVERY_S = 20.0  # `flwr run --stream` shows a progress line at least this often while the server waits
EPSILON_TOLERANCE = 1.01  # a calibrated DP payload may land a hair above the requested epsilon


def say(text: str) -> None:
    """Progress lines of the ServerApp; Flower forwards the process output to `flwr run --stream` / logs."""
    print(f"[condex] {text}", flush=True)


def server_config(run_config: Mapping[str, Any], overrides: Mapping[str, Any] | None = None) -> CondexConfig:
    """The run config's setting (``setting = "cifar10_gpu"``; default ``fmnist_cpu``) composed, then the run
    config's own entries, then programmatic overrides (tests); validated (``shared.config.config_for_run``)."""
    return config_for_run(run_config, overrides)


def build_app(overrides: Mapping[str, Any] | None = None) -> ServerApp:
    """A ServerApp running ``run_job``; ``overrides`` (``section.key`` entries) win over the run config, which
    is how in-process callers (tests with a local Grid) choose their setting."""
    server_app = ServerApp()
    fixed = dict(overrides or {})

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        try:  # a bad run config fails here, before any node is queried, with the field named
            cfg = server_config(context.run_config, fixed)
        except CondexError as exc:
            say(f"run failed before the condense round: {type(exc).__name__}: {exc}")
            raise RuntimeError(f"condex run failed: {exc}") from None
        report = run_job(grid, cfg, command=os.environ.get("CONDEX_COMMAND") or run_command(cfg))
        if report.status != "completed":  # mark the Flower run as failed; the report says why
            raise RuntimeError(f"condex run failed: {report.error}")

    return server_app


app = build_app()


def run_command(cfg: CondexConfig) -> str:
    """``flwr run`` with the run's setting (unless the default) and the run-config entries that differ from that
    setting's composition (for the report)."""
    defaults = flower_values(to_flat(load_config(setting=cfg.setting)))
    changed = {k: v for k, v in flower_values(to_flat(cfg)).items() if defaults.get(k) != v}
    setting = {"setting": cfg.setting} if cfg.setting != DEFAULT_SETTING else {}
    if not changed and not setting:
        return "flwr run ."
    pairs = " ".join(f"{k}={json.dumps(v) if isinstance(v, str) else str(v).lower() if isinstance(v, bool) else v}"
                     for k, v in [*setting.items(), *sorted(changed.items())])
    return f"flwr run . --run-config '{pairs}'"


# ---- the job -------------------------------------------------------------------------------------------
@dataclass
class Collected:
    """What the condense round produced: per-node outcomes and the accepted payloads (by node id)."""

    outcomes: list[NodeOutcome] = field(default_factory=list)
    payloads: dict[int, CondensedPayload] = field(default_factory=dict)


def run_job(grid: Grid, cfg: CondexConfig, command: str = "flwr run", out_dir: Path | None = None) -> RunReport:
    """The whole federated job; always writes the report, even when it fails."""
    start = time.perf_counter()
    out_dir = out_dir or new_run_dir(cfg)
    report = RunReport(command=command, config=flower_values(to_flat(cfg)))
    try:
        _run_stages(grid, cfg, out_dir, report)
        report.status = "completed"
    except CondexError as exc:  # bad input, missing nodes, too few payloads: a clear, expected failure
        report.status, report.error = "failed", f"{type(exc).__name__}: {exc}"
        say(f"run failed: {report.error}")
    except Exception as exc:  # a bug: still leave a report behind, then let Flower mark the run failed
        report.status, report.error = "failed", f"unexpected {type(exc).__name__}: {exc}"
        raise
    finally:
        report.timings["total"] = round(time.perf_counter() - start, 2)
        json_path, md_path = report.write(out_dir)
        say(f"report: {json_path} and {md_path}\n\n{report.to_markdown()}")
    return report


def _run_stages(grid: Grid, cfg: CondexConfig, out_dir: Path, report: RunReport) -> None:
    timings = report.timings
    teacher, teacher_card, teacher_path = load_teacher(cfg)
    report.teacher = {"arch": teacher_card.arch, "checkpoint": str(teacher_path), "dataset": teacher_card.dataset}
    check_engine_config(cfg, teacher_card)  # a typo in distill.* fails before the sites spend compute and budget
    check_tensorboard(cfg.tensorboard)
    if not cfg.condense.private:  # the sites will send non-DP payloads: say what that means, with the figure
        say(non_dp_warning(cfg.condense.method))
    t = time.perf_counter()
    nodes = wait_for_nodes(grid, cfg.federation.min_nodes, cfg.federation.node_wait_timeout_s, cfg.federation.max_nodes)
    report.nodes_connected = len(list(grid.get_node_ids()))
    timings["wait_nodes"] = round(time.perf_counter() - t, 2)
    t = time.perf_counter()
    collected = Collected(outcomes=report.node_outcomes)  # the report sees each outcome as soon as it is judged
    collect_payloads(grid, nodes, cfg, payload_spec(teacher_card, cfg), teacher_card.class_names, into=collected)
    timings["condense_round"] = round(time.perf_counter() - t, 2)
    check_quorum(collected, len(nodes), cfg.federation.min_payload_fraction)
    report.plots |= site_plots(out_dir / "sites", collected.payloads, teacher_card)
    test_set = server_test_set(cfg, teacher_card)
    report.teacher["accuracy"] = _accuracy(teacher, teacher_card, test_set)
    t = time.perf_counter()
    payloads = screen(collected.payloads, teacher, teacher_card, cfg, report)
    result = run_engine(teacher, teacher_card, teacher_path, payloads, cfg, out_dir, test_set)
    timings["distill_export"] = round(time.perf_counter() - t, 2)
    report.engine = result.details
    report.student = {"arch": result.card.arch, "path": str(result.checkpoint), "exports": result.exports,
                      "accuracy": result.details.get("accuracy")}
    say(f"student {result.card.arch} exported to {result.checkpoint}")
    report.plots |= {f"distillation {p.stem}": str(p) for p in sorted((out_dir / "distill" / "plots").glob("*.png"))}
    if cfg.federation.federated_eval:
        t = time.perf_counter()
        answered = [o.node_id for o in collected.outcomes if o.status in (ACCEPTED, REJECTED)]
        federated_evaluation(grid, answered, result.student, result.card, cfg, collected.outcomes)
        timings["federated_eval"] = round(time.perf_counter() - t, 2)


def screen(payloads: dict[int, CondensedPayload], teacher: nn.Module, card: ModelCard, cfg: CondexConfig,
           report: RunReport) -> dict[int, CondensedPayload]:
    """The accepted payloads after ``server.screening`` (poisoned, noisy, copied samples out); report updated."""
    from server.screening import screen_payloads

    kept, report.screening = screen_payloads({f"node:{n}": p for n, p in payloads.items()}, teacher, card,
                                             cfg.screen)
    if cfg.screen.enabled:
        say(f"screening kept {report.screening['kept_samples']} of {report.screening['total_samples']} samples")
    if not kept:
        raise PayloadError("screening dropped every payload (see the report's screening section); if the sites "
                           "are honest, lower screen.min_relative_agreement or set screen.enabled=false")
    return {int(name.split(":", 1)[1]): payload for name, payload in kept.items()}


def site_plots(directory: Path, payloads: Mapping[int, CondensedPayload], card: ModelCard) -> dict[str, str]:
    """Per-site label distributions and payload grids (``server.flower.report.write_site_plots``); a plot that
    cannot be drawn is a line in the log, never the end of the run."""
    try:
        names = list(card.class_names) or [str(c) for c in range(card.num_classes)]
        written = write_site_plots(directory, dict(payloads), names)
    except Exception as exc:  # the error boundary: a figure is never worth the run
        say(f"site plots not written ({type(exc).__name__}: {exc})")
        return {}
    if written:
        say(f"site plots: {directory}")
    return written


def new_run_dir(cfg: CondexConfig) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    base = Path(cfg.output_dir).expanduser()
    return (base if base.is_absolute() else Path.cwd() / base).resolve() / f"federated-{stamp}-{os.getpid()}"


# ---- stage 1: teacher and what it accepts --------------------------------------------------------------
def resolve_path(value: str, key: str) -> Path:
    """A configured path: absolute, or relative to the working directory, or to the condex project."""
    path = Path(value).expanduser()
    candidates = [path] if path.is_absolute() else [Path.cwd() / path, PROJECT_ROOT / path]
    env_root = os.environ.get("CONDEX_ROOT")
    if env_root and not path.is_absolute():
        candidates.insert(0, Path(env_root) / path)
    for candidate in candidates:
        if candidate.exists():
            return candidate.resolve()
    tried = ", ".join(str(c) for c in candidates)
    raise CheckpointError(f"{key}={value!r} not found (tried {tried}); pass an absolute path, e.g. "
                          f"flwr run . --run-config \"{key}='/abs/path'\"")


def load_teacher(cfg: CondexConfig) -> tuple[nn.Module, ModelCard, Path]:
    path = resolve_path(cfg.teacher.checkpoint, "teacher.checkpoint")
    model, card = load_checkpoint(path, expect_dataset=cfg.data.dataset if cfg.data.dataset != "folder" else None)
    say(f"teacher {card.arch} ({card.dataset}, {card.num_classes} classes) from {path}")
    return model, card, path


def check_engine_config(cfg: CondexConfig, card: ModelCard) -> None:
    """Look up every pluggable name of ``distill`` (base, student, KD loss, sampler, replay) and build the
    student for the teacher's geometry, so a misspelt or unusable engine setting fails the run before the
    condense round instead of after every site has condensed. Values were range-checked by ``validate``."""
    from server.distillation.kd_losses import kd_losses
    from server.distillation.pool import check_views, replays, samplers
    from server.inversion.base import inversion_methods
    from shared.models import build_model, model_names

    d = cfg.distill
    names = {"distill.student": (d.student, model_names()), "distill.kd_loss": (d.kd_loss, kd_losses.names()),
             "distill.sampler": (d.sampler, samplers.names()), "distill.replay": (d.replay, replays.names())}
    if d.synthesizes:
        names["distill.base"] = (d.base, inversion_methods.names())
    for key, (value, known) in names.items():
        if value not in known:
            raise ConfigError(f"{key}={value!r} is unknown; choose one of {', '.join(known)} "
                              f"(e.g. --run-config \"{key.replace('_', '-')}='{known[0]}'\")")
    check_views(d)
    try:
        build_model(d.student, num_classes=card.num_classes, in_channels=card.in_channels, image_size=card.image_size)
    except (CondexError, ValueError, TypeError, RuntimeError) as exc:
        raise ConfigError(f"distill.student={d.student!r} cannot be built for the teacher's {card.in_channels}x"
                          f"{card.image_size}x{card.image_size} images ({exc}); choose another student") from None


def payload_spec(card: ModelCard, cfg: CondexConfig) -> PayloadSpec:
    """The strict acceptance rule: the teacher's geometry, the requested method and IPC, the size cap and,
    for DP requests, the privacy budget."""
    eps = cfg.condense.epsilon or None  # 0 (or None in older configs) means "no privacy budget requested"
    return PayloadSpec.for_teacher(
        card, max_ipc=cfg.condense.ipc, max_bytes=cfg.federation.max_payload_bytes,
        max_epsilon=eps * EPSILON_TOLERANCE if eps is not None else None, methods=(cfg.condense.method,),
        require_secret_noise=True,  # the federated server talks to current sites only: DP noise must be secret
    )  # norm_mean/norm_std (the teacher's) go out in the query: sites normalise with these


# ---- stage 2: nodes ------------------------------------------------------------------------------------
def wait_for_nodes(grid: Grid, min_nodes: int, timeout_s: float, max_nodes: int = 0) -> list[int]:
    """Node ids once at least ``min_nodes`` are connected (sorted; at most ``max_nodes`` if > 0)."""
    deadline = time.monotonic() + timeout_s
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= min_nodes:
            say(f"{len(nodes)} node(s) connected")
            return nodes[:max_nodes] if max_nodes else nodes
        if time.monotonic() >= deadline:
            raise ConfigError(
                f"only {len(nodes)} node(s) connected after {timeout_s:.0f}s but federation.min_nodes={min_nodes}; "
                "start more SuperNodes, lower federation.min-nodes or raise federation.node-wait-timeout-s"
            )
        time.sleep(POLL_INTERVAL_S)


def condense_request(cfg: CondexConfig) -> dict[str, bool | int | float | str]:
    """The condense section as run-config entries: the nodes condense exactly what the server asks for."""
    return {k: v for k, v in flower_values(to_flat(cfg)).items() if k.startswith("condense.")}


def collect_payloads(grid: Grid, nodes: list[int], cfg: CondexConfig, spec: PayloadSpec,
                     class_names: Sequence[str] = (), into: Collected | None = None) -> Collected:
    """Fan the condense query out (with the teacher's ``class_names``: sites label their folders by them),
    gather replies within the timeout and judge each one.

    Outcomes go into ``into`` when given (the report's own list), so every outcome judged is kept whatever
    happens next."""
    request = condense_request(cfg)
    messages = [Message(wire.request_to_content(request, spec.num_classes, spec.norm_mean, spec.norm_std,
                                                class_names),
                        dst_node_id=node,
                        message_type="query.condense", ttl=cfg.federation.ttl, group_id="condense")
                for node in nodes]
    say(f"condense query ({cfg.condense.method}, IPC {cfg.condense.ipc}) sent to {len(nodes)} node(s); "
        f"waiting up to {cfg.federation.reply_timeout_s:.0f}s")
    replies = _by_source(gather_replies(grid, messages, cfg.federation.reply_timeout_s, "condense round"))
    collected = into if into is not None else Collected()
    for node in nodes:
        outcome, payload = judge_reply(node, replies.get(node), spec, cfg.federation.max_payload_bytes)
        collected.outcomes.append(outcome)
        if payload is not None:
            collected.payloads[node] = payload
        if outcome.status == ACCEPTED:
            say(f"node {node}: accepted {outcome.num_samples} samples ({outcome.method}, {outcome.source})")
        else:
            say(f"node {node}: {outcome.status.upper()}: {outcome.reason}")
    return collected


def gather_replies(grid: Grid, messages: Sequence[Message], timeout: float, label: str,
                   every: float = PROGRESS_EVERY_S) -> list[Message]:
    """Push ``messages`` and pull their replies until all came back or ``timeout`` seconds passed (what
    ``Grid.send_and_receive`` does), saying how many replied whenever one arrives and at least every ``every``
    seconds, so a long condense round is visible in ``flwr run --stream``."""
    pending = {i for i in grid.push_messages(messages) if i}
    total, replies = len(pending), []
    start = last = time.monotonic()
    while pending:
        arrived = list(grid.pull_messages(sorted(pending)))
        pending -= {m.metadata.reply_to_message_id for m in arrived}
        replies += arrived
        now = time.monotonic()
        if arrived or now - last >= every:
            say(f"{label}: {total - len(pending)}/{total} replied after {now - start:.0f}s")
            last = now
        if now - start >= timeout:
            break
        if pending:
            time.sleep(POLL_INTERVAL_S)
    return replies


def _by_source(replies: Iterable[Message]) -> dict[int, Message]:
    """Replies by sender; a second reply from the same node is ignored (the first one is judged)."""
    by_node: dict[int, Message] = {}
    for reply in replies:
        by_node.setdefault(reply.metadata.src_node_id, reply)
    return by_node


def judge_reply(node: int, reply: Message | None, spec: PayloadSpec,
                max_bytes: int) -> tuple[NodeOutcome, CondensedPayload | None]:
    """Classify one node's reply: timeout, node error, rejected reply (with the validator's reason) or accepted
    payload. Every field of the reply is decoded and checked here; nothing a node sends raises out of it."""
    if reply is None:
        return NodeOutcome(node, TIMEOUT, reason="no reply within federation.reply_timeout_s"), None
    outcome = NodeOutcome(node, ACCEPTED)
    try:
        if reply.has_error():  # a site's policy refusal is kept apart: its reason names the policy key and value
            code = reply.error.code
            outcome.status = REFUSED if code == POLICY_REFUSAL_CODE else FAILED
            outcome.reason = f"node error {code}: {str(reply.error.reason)[:2000]}"
            return outcome, None
        payload = _judge_content(reply.content, outcome, spec, max_bytes)
    except PayloadError as exc:
        outcome.status, outcome.reason = REJECTED, f"PayloadError: {exc}"
        return outcome, None
    except Exception as exc:  # the error boundary: a reply nobody foresaw rejects its node only
        outcome.status, outcome.reason = REJECTED, f"reply could not be judged ({type(exc).__name__}: {exc})"
        return outcome, None
    return outcome, payload


def _judge_content(content: Any, outcome: NodeOutcome, spec: PayloadSpec, max_bytes: int) -> CondensedPayload:
    """Fill ``outcome`` from the reply's metrics and payload; ``PayloadError`` names the first bad field."""
    metrics = wire.checked_metrics(content, wire.NODE_METRICS, wire.NODE_METRIC_RANGES)
    outcome.source = wire.node_info(content).get("source", "")[:200]
    outcome.condense_seconds, outcome.condense_finished = metrics.get("condense-seconds"), \
        metrics.get("condense-finished")
    outcome.payload_bytes = wire.content_bytes(content)
    outcome.audit = {k: v for k, v in metrics.items() if k.startswith("audit-")}
    outcome.local_train, outcome.local_test = _maybe_int(metrics.get("local-train")), \
        _maybe_int(metrics.get("local-test"))
    # a generator payload is drawn at the IPC the server asked for, whatever IPC the site's metadata echoes
    payload = wire.payload_from_content(content, max_bytes=max_bytes, ipc=spec.max_ipc)
    outcome.method, outcome.ipc, outcome.num_samples = payload.meta.method, payload.meta.ipc, len(payload)
    outcome.epsilon, outcome.delta = payload.meta.epsilon, payload.meta.delta
    validate_payload(payload, spec)
    return payload


def check_quorum(collected: Collected, queried: int, min_fraction: float) -> None:
    accepted = len(collected.payloads)
    if queried == 0 or accepted == 0 or accepted / queried < min_fraction:
        raise PayloadError(
            f"only {accepted} of {queried} node(s) sent a valid payload, below federation.min_payload_fraction="
            f"{min_fraction}; see the per-node reasons in the report (or lower federation.min-payload-fraction)"
        )
    say(f"{accepted}/{queried} payload(s) accepted")


# ---- stage 3: engine -----------------------------------------------------------------------------------
@dataclass
class EngineResult:
    """The exported student (in memory and on disk) and what the engine measured."""

    student: nn.Module
    card: ModelCard
    checkpoint: Path
    exports: dict[str, str]
    details: dict[str, Any]


def run_engine(teacher: nn.Module, teacher_card: ModelCard, teacher_path: Path,
               payloads: Mapping[int, CondensedPayload], cfg: CondexConfig, out_dir: Path,
               test_set: Any) -> EngineResult:
    """Guided model inversion + KD on the accepted payloads (``server.distillation``), then the export."""
    from server.distillation import Distiller, condensed_from_payloads
    from server.distillation.plots import save_end_plots
    from server.distillation.watch import RunWatcher
    from shared.device import select_device

    condensed = condensed_from_payloads({f"node:{n}": p for n, p in payloads.items()}, teacher_card)
    distiller = Distiller(
        cfg.distill, teacher, teacher_card, condensed, test_set, out_dir / "distill",
        device=select_device(cfg.device), seed=cfg.seed, progress=sys.stdout.isatty(),
        provenance={"teacher_checkpoint": str(teacher_path), "federation": {"nodes": sorted(payloads)}},
    )
    say(f"distilling {cfg.distill.student} ({cfg.distill.base}, mode {cfg.distill.mode}) from "
        f"{len(distiller.condensed or [])} condensed samples")
    run_dir = out_dir / "distill"
    # progress lines for `flwr run --stream` (the rich bar needs a terminal); TensorBoard events if enabled
    with RunWatcher(run_dir / "metrics.jsonl", say, every=PROGRESS_EVERY_S,
                    tensorboard_dir=run_dir / "tensorboard" if cfg.tensorboard else None):
        result = distiller.fit()
    save_end_plots(distiller, test_set)
    card = ModelCard.read(run_dir / "student" / "card.json")
    student_dir = out_dir / "student"
    exports = export_formats(result.student, card, student_dir)
    details = result.summary()
    details.pop("curve", None)
    return EngineResult(result.student, card, student_dir, exports, details | {"accuracy": result.accuracy})


def export_formats(student: nn.Module, card: ModelCard, out: Path) -> dict[str, str]:
    """The student as safetensors + card, TorchScript and (with the ``export`` extra) ONNX, each verified by
    reloading (``server.export``); ``out`` is itself a checkpoint directory."""
    from server.export import FORMATS, export_student, onnx_available

    formats = [f for f in FORMATS if f != "onnx" or onnx_available()]
    records = export_student(student, card, out, formats=formats)
    return {r.format: r.path for r in records}


# ---- stage 4: evaluation -------------------------------------------------------------------------------
def server_test_set(cfg: CondexConfig, card: ModelCard) -> Any:
    """The teacher dataset's test split at the server (None, with a note, when the server has none)."""
    from shared.data import load_dataset

    try:
        return load_dataset(card.dataset, "test", root=cfg.data.data_root or None, download=cfg.data.download)
    except (DataError, CondexError) as exc:
        say(f"no server test set for {card.dataset} ({exc}); server-side accuracies are left empty")
        return None


def _accuracy(model: nn.Module, card: ModelCard, test_set: Any) -> float | None:
    from shared.train import evaluate

    if test_set is None:
        return None
    with torch.no_grad():
        return round(evaluate(model, test_set, stats=(tuple(card.mean), tuple(card.std))), 4)


def federated_evaluation(grid: Grid, nodes: list[int], student: nn.Module, card: ModelCard, cfg: CondexConfig,
                         outcomes: list[NodeOutcome]) -> None:
    """Send the student to ``nodes``; record each node's held-out accuracy (or its error) in ``outcomes``."""
    if not nodes:
        return
    content = wire.student_to_content(student, card)
    messages = []
    for node in nodes:
        messages.append(Message(copy.deepcopy(content), dst_node_id=node, message_type="evaluate",
                                ttl=cfg.federation.eval_timeout_s + 60.0, group_id="evaluate"))
    replies = _by_source(gather_replies(grid, messages, cfg.federation.eval_timeout_s, "federated evaluation"))
    by_node = {o.node_id: o for o in outcomes}
    for node in nodes:
        judge_eval_reply(replies.get(node), by_node[node])
    done = [o.eval_accuracy for o in outcomes if o.eval_accuracy is not None]
    if done:
        say(f"federated evaluation on {len(done)} node(s): mean accuracy {sum(done) / len(done):.4f}")


def judge_eval_reply(reply: Message | None, outcome: NodeOutcome) -> None:
    """Record one node's evaluation in ``outcome``: an accuracy in [0, 1] (and example count), or the reason
    the reply was not used. Nothing a node sends raises out of here, and a bad value is never averaged."""
    outcome.eval_accuracy, outcome.eval_examples = None, None
    try:
        if reply is None:
            outcome.eval_error = "no evaluation reply in time"
        elif reply.has_error():
            outcome.eval_error = f"error {reply.error.code}: {str(reply.error.reason)[:2000]}"
        else:
            metrics = wire.checked_metrics(reply.content, wire.EVAL_METRICS, wire.EVAL_METRIC_RANGES,
                                           required=("accuracy",))
            outcome.eval_accuracy = metrics["accuracy"]
            outcome.eval_examples = _maybe_int(metrics.get("num-examples"))
    except PayloadError as exc:
        outcome.eval_error = f"rejected evaluation reply: {exc}"
    except Exception as exc:  # the error boundary: one odd reply loses one evaluation only
        outcome.eval_accuracy, outcome.eval_examples = None, None
        outcome.eval_error = f"evaluation reply could not be judged ({type(exc).__name__}: {exc})"


# ---- helpers -------------------------------------------------------------------------------------------
def _maybe_int(value: float | None) -> int | None:
    return None if value is None else int(value)


if __name__ == "__main__":  # pragma: no cover - the app is started by Flower
    sys.exit("start the ServerApp with `flwr run .` (see README)")
