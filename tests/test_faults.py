"""Hostile and faulty inputs (issue 13.2): every field of a condense or evaluate reply is judged per node, sizes
are checked from the npy header before anything is allocated, one bad node is rejected with its reason while
the run goes on, and a bad engine setting fails before any site condenses.

The replies are built by the real wire code (``shared.wire``) from real payloads and then damaged the way a
buggy or hostile site would; the end-to-end tests run the real ServerApp job over the real ClientApp
(``LocalGrid`` from tests/test_flower_sim.py)."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from flwr.app import Array, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.supercore.task_identity import TaskIdentity

from client import app as client_app
from server.flower import app as server_app
from server.flower.report import ACCEPTED, REJECTED, NodeOutcome, RunReport
from shared import wire
from shared.data import LabeledImages
from shared.payload import CondensedPayload, PayloadMeta, PayloadSpec
from tests.test_flower_sim import NON_DP, LocalGrid, read_report, tiny_overrides, tiny_teacher

SPEC = PayloadSpec(num_classes=10, image_shape=(1, 28, 28), max_ipc=2, methods=("dm",))
MAX_BYTES = 64 * 2**20


@pytest.fixture(autouse=True)
def _flower_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr-home"))
    monkeypatch.setenv("FLWR_TELEMETRY_ENABLED", "0")
    monkeypatch.setenv("FLWR_DISABLE_UPDATE_CHECK", "1")
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, SUPERLINK_NODE_ID


def good_payload() -> CondensedPayload:
    meta = PayloadMeta("dm", "fashion_mnist", 2, 10, 1, 28, 28, [0.286], [0.353], local_class_counts=[5] * 10,
                       seed=0)
    return CondensedPayload(torch.rand(20, 1, 28, 28, generator=torch.Generator().manual_seed(0)),
                            torch.arange(10).repeat(2), meta)


def good_content() -> RecordDict:
    return wire.payload_to_content(good_payload(), {"local-train": 100, "local-test": 20, "condense-seconds": 1.5},
                                   {"source": "test site"})


def as_reply(content: RecordDict) -> Message:
    return Message(content, dst_node_id=SUPERLINK_NODE_ID, message_type="query.condense", group_id="condense")


def npy_header(shape: tuple[int, ...], descr: str = "<f8") -> bytes:
    """A valid .npy header (about 100 bytes) declaring ``shape``, with no data after it."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": descr, "fortran_order": False, "shape": shape})
    return buffer.getvalue()


def _set_metric(name: str, value: Any) -> Callable[[RecordDict], None]:
    def change(content: RecordDict) -> None:
        content[wire.NODE_METRICS] = MetricRecord({**dict(content[wire.NODE_METRICS]), name: value})
    return change


def _set_array(name: str, array: Array) -> Callable[[RecordDict], None]:
    def change(content: RecordDict) -> None:
        content[wire.PAYLOAD][name] = array
    return change


def _raw(name: str, data: bytes, dtype: str = "uint8", shape: tuple[int, ...] = (20, 1, 28, 28)) -> Callable:
    return _set_array(name, Array(dtype=dtype, shape=shape, stype="numpy.ndarray", data=data))


def _set_meta(name: str, value: Any) -> Callable[[RecordDict], None]:
    def change(content: RecordDict) -> None:
        content[wire.PAYLOAD_META] = ConfigRecord({**dict(content[wire.PAYLOAD_META]), name: value})
    return change


def _drop(record: str) -> Callable[[RecordDict], None]:
    def change(content: RecordDict) -> None:
        del content[record]
    return change


# (what is damaged, how, words the rejection reason must contain)
HOSTILE_REPLIES = [
    ("NaN local-train", _set_metric("local-train", float("nan")), "node-metrics.local-train"),
    ("inf local-train", _set_metric("local-train", float("inf")), "node-metrics.local-train"),
    ("negative local-test", _set_metric("local-test", -3), "node-metrics.local-test"),
    ("fractional local-train", _set_metric("local-train", 2.5), "whole number"),
    ("list local-train", _set_metric("local-train", [1.0, 2.0]), "node-metrics.local-train"),
    ("NaN condense-seconds", _set_metric("condense-seconds", float("nan")), "condense-seconds"),
    ("audit AUC above 1", _set_metric("audit-mia-auc", 7.0), "node-metrics.audit-mia-auc"),
    ("0-d labels", _set_array("labels", Array(np.array(3, dtype=np.int64))), "must be N x C x H x W / N"),
    ("0-d images", _set_array("images", Array(np.array(3, dtype=np.uint8))), "must be N x C x H x W / N"),
    ("empty npy bytes", _raw("images", b""), "not a readable .npy"),
    ("malformed npy bytes", _raw("images", b"\x93NUMPYgarbage"), "not a readable .npy"),
    ("10^15 elements in a 100-byte header", _raw("images", npy_header((10**15,)), "float64", (10**15,)),
     "max_payload_bytes"),
    ("header longer than its data", _raw("labels", npy_header((20,), "<i8") + b"\0" * 8, "int64", (20,)),
     "truncated"),
    ("object dtype", _raw("labels", npy_header((20,), "|O")), "dtype"),
    ("pickled labels", _set_array("labels", Array(dtype="int64", shape=(20,), stype="numpy.ndarray",
                                                  data=b"\x80\x04K\x03.")), "not a readable .npy"),
    ("torch serialisation", _set_array("images", Array(dtype="uint8", shape=(1,), stype="torch.Tensor",
                                                       data=b"x")), "serialisation"),
    ("float64 images", _set_array("images", Array(np.zeros((20, 1, 28, 28)))), "wire dtype"),
    ("extra array", _set_array("weights", Array(np.zeros(3, dtype=np.int64))), "unexpected array"),
    ("no payload", _drop(wire.PAYLOAD), "no ArrayRecord"),
    ("no metadata", _drop(wire.PAYLOAD_META), "no ConfigRecord"),
    ("string ipc", _set_meta("ipc", "2"), "meta.ipc"),
    ("huge ipc", _set_meta("ipc", 2**62), "meta.ipc"),
    ("NaN mean", _set_meta("mean", [float("nan")]), "meta.std"),
    ("unknown meta key", _set_meta("evil", "x"), "unknown key"),
    ("labels out of range", _set_array("labels", Array(np.full(20, 10**12, dtype=np.int64))), "labels"),
]


@pytest.mark.parametrize(("name", "damage", "reason"), HOSTILE_REPLIES, ids=[c[0] for c in HOSTILE_REPLIES])
def test_each_hostile_reply_rejects_its_node_with_a_reason(name: str, damage: Callable, reason: str) -> None:
    content = good_content()
    damage(content)
    outcome, payload = server_app.judge_reply(7, as_reply(content), SPEC, MAX_BYTES)
    assert outcome.status == REJECTED and payload is None, name
    assert reason in outcome.reason, outcome.reason
    assert outcome.reason.startswith("PayloadError"), outcome.reason  # a foreseen, named failure


def test_the_undamaged_reply_is_accepted() -> None:
    outcome, payload = server_app.judge_reply(7, as_reply(good_content()), SPEC, MAX_BYTES)
    assert outcome.status == ACCEPTED and payload is not None and len(payload) == 20
    assert outcome.local_train == 100 and outcome.condense_seconds == 1.5 and outcome.audit == {}


def test_a_sites_audit_figures_reach_its_outcome() -> None:
    content = good_content()
    for name, value in {"audit-mia-auc": 0.51, "audit-memorization-share": 0.0}.items():
        _set_metric(name, value)(content)
    outcome, _ = server_app.judge_reply(7, as_reply(content), SPEC, MAX_BYTES)
    assert outcome.status == ACCEPTED and outcome.audit == {"audit-mia-auc": 0.51, "audit-memorization-share": 0.0}


def test_the_declared_size_is_refused_without_allocating() -> None:
    """The npy header alone decides: 10^15 float64 elements are refused long before np.load would try to
    allocate 8 PB, and even without a byte cap the declared size must match the bytes present."""
    header = npy_header((10**15,))
    assert len(header) < 200
    with pytest.raises(wire.PayloadError, match="max_payload_bytes"):
        wire.check_npy_header(header, "payload.images", MAX_BYTES)
    with pytest.raises(wire.PayloadError, match="truncated"):
        wire.check_npy_header(header, "payload.images", None)


@pytest.mark.parametrize(("metrics", "error"), [
    ({"accuracy": 7.0}, "eval-metrics.accuracy"), ({"accuracy": -3.0}, "eval-metrics.accuracy"),
    ({"accuracy": float("nan")}, "eval-metrics.accuracy"), ({"accuracy": [0.5, 0.5]}, "eval-metrics.accuracy"),
    ({"num-examples": 10}, "missing metric"), ({"accuracy": 0.5, "num-examples": -1}, "num-examples"),
])
def test_bad_evaluation_replies_are_not_averaged(metrics: dict[str, Any], error: str) -> None:
    good, bad = NodeOutcome(1, ACCEPTED), NodeOutcome(2, ACCEPTED)
    server_app.judge_eval_reply(as_reply(RecordDict({wire.EVAL_METRICS: MetricRecord({"accuracy": 0.8})})), good)
    server_app.judge_eval_reply(as_reply(RecordDict({wire.EVAL_METRICS: MetricRecord(metrics)})), bad)
    assert bad.eval_accuracy is None and error in bad.eval_error, bad.eval_error
    report = RunReport(command="pytest", config={}, node_outcomes=[good, bad])
    assert report.federated_eval() == {"mean": 0.8, "weighted_mean": None, "nodes": 1}


# ---- end to end: the real job over the real ClientApp ----------------------------------------------------
def hostile_client(damage: Callable[[RecordDict], None] | None = None,
                   eval_metrics: dict[str, Any] | None = None) -> ClientApp:
    """The real ClientApp whose condense reply is damaged by ``damage`` and whose evaluation reply is replaced
    by ``eval_metrics`` (a buggy or hostile site)."""
    real = client_app.build_app()
    app = ClientApp()

    @app.query("condense")
    def condense(msg: Message, context: Context) -> Message:
        reply = real(msg, context)
        if damage is not None and not reply.has_error():
            damage(reply.content)
        return reply

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        if eval_metrics is None:
            return real(msg, context)
        return Message(RecordDict({wire.EVAL_METRICS: MetricRecord(eval_metrics)}), reply_to=msg)

    return app


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory, fmnist_train: LabeledImages) -> Path:
    return tiny_teacher(tmp_path_factory.mktemp("teacher") / "resnet8", fmnist_train)


def _site(i: int) -> dict[str, Any]:
    return {"partition-id": i, "num-partitions": 6}


def test_hostile_nodes_are_rejected_and_the_run_goes_on(teacher: Path, tmp_path: Path) -> None:
    overrides = tiny_overrides(teacher, tmp_path / "out") | NON_DP | {"condense.method": "real",
                                                                      "federation.min-payload-fraction": 0.3}
    good = client_app.build_app()
    grid = LocalGrid({
        1: (good, _site(0)),
        # accepted payload, but its evaluation says 7.0 (after the student was exported)
        2: (hostile_client(eval_metrics={"accuracy": 7.0, "num-examples": 10}), _site(1)),
        3: (hostile_client(_set_metric("local-train", float("nan")), {"accuracy": [0.5, 0.5]}), _site(2)),
        4: (hostile_client(_raw("images", npy_header((10**15,)), "float64", (10**15,))), _site(3)),
        5: (hostile_client(_set_array("labels", Array(np.array(3, dtype=np.int64)))), _site(4)),
        6: (hostile_client(eval_metrics={"accuracy": float("nan")}), _site(5)),
    }, run_config={})
    report = server_app.run_job(grid, server_app.server_config({}, overrides), command="pytest")
    assert report.status == "completed", report.error
    saved = read_report(tmp_path / "out")
    per_node = {p["node_id"]: p for p in saved["per_node"]}
    assert [per_node[n]["status"] for n in range(1, 7)] == [ACCEPTED, ACCEPTED, REJECTED, REJECTED, REJECTED,
                                                            ACCEPTED]
    assert "local-train" in per_node[3]["reason"] and "max_payload_bytes" in per_node[4]["reason"]
    assert "N x C x H x W / N" in per_node[5]["reason"]
    # only node 1's (and node 4's / 5's real evaluation) accuracies are fractions; 7.0, NaN and a list are not
    for node in (2, 3, 6):
        assert per_node[node]["eval_accuracy"] is None and "eval-metrics.accuracy" in per_node[node]["eval_error"]
    valid = [p["eval_accuracy"] for p in saved["per_node"] if p["eval_accuracy"] is not None]
    assert valid and all(0.0 <= a <= 1.0 for a in valid)
    assert saved["federated_eval_mean"] == pytest.approx(sum(valid) / len(valid))


@pytest.mark.parametrize(("key", "value"), [
    ("distill.base", "nope"), ("distill.student", "nope"), ("distill.kd-loss", "nope"),
    ("distill.sampler", "nope"), ("distill.replay", "nope"),
])
def test_a_bad_engine_name_fails_before_any_site_condenses(teacher: Path, tmp_path: Path, key: str,
                                                           value: str) -> None:
    calls: list[int] = []
    real = client_app.build_app()
    counting = ClientApp()

    @counting.query("condense")
    def condense(msg: Message, context: Context) -> Message:
        calls.append(msg.metadata.dst_node_id)
        return real(msg, context)

    overrides = tiny_overrides(teacher, tmp_path / "out") | {key: value}
    grid = LocalGrid({1: (counting, _site(0)), 2: (counting, _site(1))}, run_config={})
    report = server_app.run_job(grid, server_app.server_config({}, overrides), command="pytest")
    assert report.status == "failed" and key.replace("-", "_") in report.error and "choose one of" in report.error
    assert calls == []  # no site spent compute or privacy budget
    assert read_report(tmp_path / "out")["status"] == "failed"


def test_outcomes_judged_stay_in_the_report_when_the_run_fails(teacher: Path, tmp_path: Path) -> None:
    """Too few valid payloads end the run after judging: the report still lists every node's outcome."""
    overrides = tiny_overrides(teacher, tmp_path / "out") | NON_DP | {"condense.method": "real",
                                                                      "federation.min-payload-fraction": 1.0}
    grid = LocalGrid({1: (client_app.build_app(), _site(0)),
                      2: (hostile_client(_set_metric("local-test", -1)), _site(1))}, run_config={})
    server_app.run_job(grid, server_app.server_config({}, overrides), command="pytest")
    saved = read_report(tmp_path / "out")
    assert saved["status"] == "failed" and "min_payload_fraction" in saved["error"]
    assert saved["payloads_accepted"] == 1 and saved["payloads_rejected"] == 1
    assert "node-metrics.local-test" in saved["rejections"][0]["reason"]


def test_a_bad_run_config_fails_the_serverapp_before_any_node_is_queried(tmp_path: Path) -> None:
    calls: list[int] = []
    counting = ClientApp()

    @counting.query("condense")
    def condense(msg: Message, context: Context) -> Message:  # pragma: no cover - must never run
        calls.append(msg.metadata.dst_node_id)
        raise AssertionError("queried")

    grid = LocalGrid({1: (counting, _site(0))}, run_config={})
    app = server_app.build_app({"condense.ipc": True, "output-dir": str(tmp_path)})
    with pytest.raises(RuntimeError, match=r"condense\.ipc=True must be an integer"):
        app(grid, Context(1, 0, {}, RecordDict(), {}))
    assert calls == []
