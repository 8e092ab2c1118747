"""The Flower apps end to end: ServerApp orchestration (waiting, fan-out, validation, quorum, report) with
the real ClientApp code, and a real 3-node Flower simulation (Ray) on Fashion-MNIST.

Sizes are tiny (a 1-epoch ResNet-8/4 teacher on 2000 images, DP-DM or DM with IPC 2 and 3 iterations, 2
distillation epochs) so the plumbing, not the accuracy, is what is tested; the accuracy of the default job is
measured by the main job (README)."""

from __future__ import annotations

import itertools
import json
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
import torch
from flwr.app import Array, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

from client import app as client_app
from server.flower import app as server_app
from server.flower.report import ACCEPTED, FAILED, REJECTED, TIMEOUT
from shared import wire
from shared.checkpoint import card_for_dataset, save_checkpoint
from shared.data import LabeledImages
from shared.errors import ConfigError
from shared.models import build_model
from shared.train import train_classifier

ROOT = Path(__file__).resolve().parents[1]


# ---- shared helpers (also used by tests/test_deploy.py) ------------------------------------------------
def tiny_teacher(directory: Path, train: LabeledImages) -> Path:
    """A real but tiny teacher: ResNet-8 (width 4, with BatchNorm for the inversion losses) after one epoch
    on 2000 Fashion-MNIST images."""
    torch.manual_seed(0)
    model = build_model("resnet8", num_classes=10, in_channels=1, image_size=28, width=4)
    subset = train.subset(range(2000))
    train_classifier(model, subset, None, epochs=1, batch_size=128, lr=0.05, progress=False, augment="none")
    card = card_for_dataset(train.info, "resnet8", {"width": 4}, role="teacher", seed=0)
    return save_checkpoint(directory, model.eval(), card)


def tiny_overrides(teacher: Path, out: Path) -> dict[str, Any]:
    """Run-config entries that make the whole job take seconds. The job is DP-DM with epsilon 8, which every
    site's default policy accepts (a deployed site, tests/test_deploy.py, refuses non-DP methods); tests of
    non-DP methods set ``NON_DP`` entries on top."""
    return {
        "teacher.checkpoint": str(teacher), "output-dir": str(out), "device": "cpu",
        "condense.method": "dp-dm", "condense.epsilon": 8.0, "condense.ipc": 2, "condense.iterations": 3,
        "condense.batch-real": 16, "condense.model-width": 16,
        "distill.epochs": 2, "distill.kd-steps": 2, "distill.synthesis-batch-size": 16, "distill.kd-batch-size": 32,
        "distill.latent-dim": 16, "distill.generator-width": 8, "distill.discriminator-hidden": 16,
        "distill.condensed-batch-size": 8, "distill.warmup-epochs": 0, "distill.eval-samples": 200,
        "distill.eval-every-seconds": 1000.0, "distill.checkpoint-every": 0, "distill.grid-every": 0,
        "data.test-fraction": 0.2, "federation.reply-timeout-s": 600.0, "federation.eval-timeout-s": 300.0,
    }


NON_DP = {"condense.epsilon": 0.0}  # with a non-DP condense.method on top of tiny_overrides


def read_report(out: Path) -> dict[str, Any]:
    reports = sorted(out.glob("federated-*/report.json"))
    assert len(reports) == 1, f"expected one run report under {out}, found {reports}"
    return json.loads(reports[0].read_text())


# ---- an in-process Grid: the real ClientApp objects, no Flower runtime ---------------------------------
class LocalGrid(Grid):
    """Delivers messages by calling each node's ClientApp directly; nodes in ``silent`` never answer."""

    def __init__(self, nodes: dict[int, tuple[ClientApp, dict[str, Any]]], run_config: dict[str, Any],
                 silent: Iterable[int] = ()) -> None:
        # Messages take their run and sender from the process's task identity (set by Flower's runtimes).
        TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, SUPERLINK_NODE_ID
        self.nodes = nodes
        self.silent = set(silent)
        self.outbox: dict[str, Message] = {}  # message id -> the node's reply, until pulled
        self.contexts = {n: Context(1, n, dict(cfg), RecordDict(), dict(run_config)) for n, (_, cfg) in nodes.items()}

    def set_run(self, run: Any) -> None:  # pragma: no cover - not used in-process
        pass

    @property
    def run(self) -> Any:  # pragma: no cover
        return None

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
                       ttl: float | None = None) -> Message:
        return Message(content, dst_node_id=dst_node_id, message_type=message_type, group_id=group_id, ttl=ttl)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.nodes)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Each node answers at once (a silent one never); the replies wait for ``pull_messages``."""
        ids = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = uuid.uuid4().hex
            ids.append(msg.metadata.message_id)
            node = msg.metadata.dst_node_id
            if node not in self.silent:
                app, _ = self.nodes[node]
                self.outbox[msg.metadata.message_id] = app(msg, self.contexts[node])
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self.outbox.pop(i) for i in list(message_ids) if i in self.outbox]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return list(self.pull_messages(self.push_messages(messages)))


def malformed_client() -> ClientApp:
    """The real ClientApp, except that its payload claims class 99 (a buggy or hostile site)."""
    real = client_app.build_app()
    app = ClientApp()

    @app.query("condense")
    def condense(msg: Message, context: Context) -> Message:
        reply = real(msg, context)
        labels = reply.content[wire.PAYLOAD]["labels"].numpy().copy()
        labels[0] = 99
        reply.content[wire.PAYLOAD]["labels"] = Array(labels)
        return reply

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        return real(msg, context)

    return app


@pytest.fixture(autouse=True)
def _flower_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Flower's state and config (FLWR_HOME) go to the test's temporary directory, never ~/.flwr."""
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr-home"))
    monkeypatch.setenv("FLWR_TELEMETRY_ENABLED", "0")
    monkeypatch.setenv("FLWR_DISABLE_UPDATE_CHECK", "1")


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory, fmnist_train: LabeledImages) -> Path:
    return tiny_teacher(tmp_path_factory.mktemp("teacher") / "resnet8", fmnist_train)


def _partition(i: int, n: int) -> dict[str, Any]:
    return {"partition-id": i, "num-partitions": n}


# ---- ServerApp orchestration with the real ClientApp ---------------------------------------------------
def test_failed_timed_out_and_malformed_nodes_do_not_stop_the_run(teacher: Path, tmp_path: Path) -> None:
    # `real` condensation keeps this test fast; DM runs in the simulation tests below.
    overrides = tiny_overrides(teacher, tmp_path / "out") | NON_DP | {"federation.min-payload-fraction": 0.4,
                                                                      "condense.method": "real",
                                                                      "federation.reply-timeout-s": 3.0}
    good = client_app.build_app()
    grid = LocalGrid({
        11: (good, _partition(0, 4)),
        12: (good, _partition(1, 4)),
        # its data cannot be loaded (its policy allows `real`: a deployed site's default would refuse it first)
        13: (good, {"data-dir": str(tmp_path / "no-such-site"), "policy-require-dp": False}),
        14: (malformed_client(), _partition(2, 4)),
        15: (good, _partition(3, 4)),  # never answers
    }, run_config={}, silent=[15])
    cfg = server_app.server_config({}, overrides)
    report = server_app.run_job(grid, cfg, command="pytest")
    assert report.status == "completed", report.error
    status = {o.node_id: o for o in report.node_outcomes}
    assert [status[n].status for n in (11, 12, 13, 14, 15)] == [ACCEPTED, ACCEPTED, FAILED, REJECTED, TIMEOUT]
    assert "DataError" in status[13].reason and "no-such-site" in status[13].reason
    assert "labels" in status[14].reason and "99" in status[14].reason
    saved = read_report(tmp_path / "out")
    assert saved["nodes"] == 5 and saved["nodes_answered"] == 3 and saved["payloads_rejected"] == 1
    assert {r["node_id"]: r["status"] for r in saved["rejections"]} == {13: FAILED, 14: REJECTED, 15: TIMEOUT}
    assert any("labels" in r["reason"] for r in saved["rejections"])
    # the student was exported and evaluated by the nodes that answered
    assert (Path(saved["student"]["path"]) / "model.safetensors").is_file()
    assert 0.0 <= saved["student_accuracy"] <= 1.0 and 0.0 <= saved["teacher_accuracy"] <= 1.0
    evaluated = {p["node_id"]: p["eval_accuracy"] for p in saved["per_node"] if p["eval_accuracy"] is not None}
    assert set(evaluated) == {11, 12, 14}
    assert saved["federated_eval_mean"] == pytest.approx(sum(evaluated.values()) / 3)
    assert "| 14 | rejected |" in (tmp_path / "out").glob("federated-*/report.md").__next__().read_text()


def test_too_few_valid_payloads_fail_the_run_with_a_report(teacher: Path, tmp_path: Path) -> None:
    overrides = tiny_overrides(teacher, tmp_path / "out") | NON_DP | {"federation.min-payload-fraction": 0.75,
                                                                      "condense.method": "real"}
    grid = LocalGrid({1: (client_app.build_app(), _partition(0, 2)),
                      2: (client_app.build_app(), {"data-dir": str(tmp_path / "missing"), "policy-require-dp": False})},
                     run_config={})
    report = server_app.run_job(grid, server_app.server_config({}, overrides), command="pytest")
    assert report.status == "failed"
    assert "1 of 2" in report.error and "min_payload_fraction" in report.error
    saved = read_report(tmp_path / "out")
    assert saved["status"] == "failed" and saved["student_accuracy"] is None


def test_waiting_for_nodes_times_out_with_a_clear_message() -> None:
    grid = LocalGrid({1: (client_app.build_app(), _partition(0, 1))}, run_config={})
    with pytest.raises(ConfigError, match=r"federation\.min_nodes=2"):
        server_app.wait_for_nodes(grid, min_nodes=2, timeout_s=0.5)
    assert server_app.wait_for_nodes(grid, min_nodes=1, timeout_s=0.5) == [1]


def test_client_rejects_invalid_requests_with_an_error_reply(teacher: Path, tmp_path: Path) -> None:
    grid = LocalGrid({1: (client_app.build_app(), _partition(0, 2))}, run_config={})
    bad = Message(wire.request_to_content({"condense.method": "dm", "condense.epsilon": 1.0}), dst_node_id=1,
                  message_type="query.condense")
    (reply,) = grid.send_and_receive([bad])
    assert reply.has_error() and reply.error.code == client_app.ERR_CONFIG
    assert "condense.epsilon" in (reply.error.reason or "")


# ---- a real Flower simulation: `flwr run` on a simulation SuperLink (simulations.run.simulate) ------------
def simulation_config(overrides: dict[str, Any], nodes: int = 3) -> Any:
    """The typed job config of ``overrides`` with ``nodes`` simulated SuperNodes (one per partition)."""
    return server_app.server_config({}, overrides | {"federation.min-nodes": nodes, "data.num-partitions": nodes})


def policy_app(directory: Path, policies: dict[int, dict[str, Any]]) -> Path:
    """A Flower app directory whose ClientApp is condex's with ``policies[partition-id]`` as each simulated
    site's policy (a simulated node's config carries no ``policy-*`` keys); the ServerApp is condex's."""
    directory.mkdir(parents=True, exist_ok=True)
    text = (ROOT / "pyproject.toml").read_text().replace('clientapp = "client.app:app"', 'clientapp = "policy_app:app"')
    (directory / "pyproject.toml").write_text(text)
    (directory / "policy_app.py").write_text(
        '"""condex\'s ClientApp with one policy per simulated partition (tests)."""\n'
        "from client.app import build_app\n\n"
        f"POLICIES = {json.dumps({str(k): v for k, v in policies.items()})}\n"
        'app = build_app(policy=lambda node_config: POLICIES[str(node_config["partition-id"])])\n')
    return directory


@pytest.mark.slow
def test_three_node_flower_simulation(teacher: Path, tmp_path: Path) -> None:
    """What simulations.run does per job and users type by hand: `flwr run <app> simulation --stream
    --federation-config num-supernodes=3 ...` against a simulation SuperLink; the app travels as a FAB and the
    run config carries the job."""
    from simulations.run import simulate

    # dm, the default job's method: a simulated site's default policy allows it
    cfg = simulation_config(tiny_overrides(teacher, tmp_path / "out") | NON_DP | {"condense.method": "dm"})
    saved = simulate(cfg, tmp_path / "out", command="pytest simulate", timeout=900)
    stream = (tmp_path / "out" / "flower" / "flwr-run.log").read_text()
    assert saved["status"] == "completed", f"{saved['error']}\n{stream[-3000:]}"
    assert saved["command"] == "pytest simulate"  # the SuperLink hands CONDEX_COMMAND on to the ServerApp
    assert saved["nodes"] == 3 and saved["payloads_accepted"] == 3
    assert all(p["num_samples"] > 0 and p["method"] == "dm" and p["ipc"] == 2 for p in saved["per_node"])
    assert all(p["source"].startswith("fashion_mnist partition") for p in saved["per_node"])
    assert saved["federated_eval_mean"] is not None
    assert (Path(saved["student"]["path"]) / "card.json").is_file()
    screening = saved["screening"]  # every sample of every site judged and accounted for
    assert screening["enabled"] and set(screening["sites"]) == {f"node:{p['node_id']}" for p in saved["per_node"]}
    assert screening["total_samples"] == sum(p["num_samples"] for p in saved["per_node"])
    assert 0 < screening["kept_samples"] <= screening["total_samples"]
    # 1 CPU per ClientApp on 2: at least two sites condensed at the same time.
    spans = sorted((p["condense_finished"] - p["condense_seconds"], p["condense_finished"]) for p in saved["per_node"])
    assert any(later[0] < earlier[1] for earlier, later in itertools.pairwise(spans)), spans
    # the ServerApp's progress reaches `flwr run --stream`: the condense round and the distillation
    assert "[condex] report:" in stream and "[condex] condense round:" in stream and "[condex] distilling:" in stream


def test_simulation_resources_come_from_the_config_and_a_gpu_share_needs_a_gpu(tmp_path: Path) -> None:
    from simulations.run import federation_config, simulate

    cfg = server_app.server_config({}, {"setting": "cifar10_gpu", "data.num-partitions": 4})
    assert federation_config(cfg) == "num-supernodes=4 client-resources-num-cpus=1 client-resources-num-gpus=0.5"
    # the report's command names the setting and only what differs from it
    assert server_app.run_command(cfg) == "flwr run . --run-config 'setting=\"cifar10_gpu\" data.num-partitions=4'"
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is visible: the share would be granted")
    saved = simulate(cfg, tmp_path / "out")  # refused before any SuperLink starts
    assert saved["status"] == "failed" and "federation.sim_client_gpus=0.5 but no CUDA GPU" in saved["error"]


def test_sweep_results_table_collects_one_row_per_job(tmp_path: Path) -> None:
    from simulations.run import RESULTS_JSONL, append_result, result_row

    report = {"status": "completed", "nodes": 3, "payloads_accepted": 2, "rejections": [{"node_id": 7}],
              "per_node": [{"epsilon": 2.0}, {"epsilon": 4.5}, {"epsilon": None}], "teacher_accuracy": 0.9,
              "student_accuracy": 0.8, "federated_eval_mean": 0.75, "seconds": 12.0}
    append_result(tmp_path, result_row("0", ["data.alpha=0.1", "condense.ipc=10"], report))
    table = append_result(tmp_path, result_row("1", ["data.alpha=1.0", "condense.ipc=10"], {"status": "failed"}))
    text = table.read_text()
    assert "Common overrides: condense.ipc=10" in text
    assert "| 0 | data.alpha=0.1 | completed | 3 | 2 | 1 | 4.5 | 0.9 | 0.8 | 0.75 | 12 |" in text
    assert "| 1 | data.alpha=1.0 | failed |" in text
    assert len((tmp_path / RESULTS_JSONL).read_text().splitlines()) == 2


def test_site_missing_the_last_classes_uses_the_teachers_class_ids(tmp_path: Path,
                                                                   fmnist_train: LabeledImages) -> None:
    """A deployment site whose folder holds only classes 0..6 still condenses into the federation's 10 classes
    (a folder's class count is otherwise inferred from its largest label) and holds out part of its data."""
    import numpy as np

    from client.task import load_local_data
    from shared.config import DataConfig
    from shared.payload import PayloadSpec, validate_payload

    keep = [i for i in range(2000) if int(fmnist_train.labels[i]) <= 6][:300]
    part = fmnist_train.subset(keep)
    (tmp_path / "site").mkdir()
    np.savez(tmp_path / "site" / "train.npz", images=part.images[:, 0].numpy(), labels=part.labels.numpy())
    data = load_local_data({"data-dir": str(tmp_path / "site")}, DataConfig(test_fraction=0.2), num_classes=10)
    assert data.train.info.num_classes == 10 and len(data.train) == 240 and len(data.test) == 60
    content = client_app.condense_content(data, server_app.server_config({}, {"condense.method": "real",
                                                                               "condense.ipc": 2}))
    payload = wire.payload_from_content(content)
    validate_payload(payload, PayloadSpec(num_classes=10, image_shape=(1, 28, 28), max_ipc=2))
    assert payload.class_counts()[7:] == [0, 0, 0]


@pytest.mark.parametrize(("field", "value", "message"), [
    ("min_nodes", 0, r"federation\.min_nodes=0"),
    ("max_nodes", 1, r"federation\.max_nodes=1 is below federation\.min_nodes=2"),
    ("reply_timeout_s", 0.0, r"federation\.reply_timeout_s"),
    ("min_payload_fraction", 1.5, r"federation\.min_payload_fraction=1\.5"),
    ("max_payload_bytes", 10, r"federation\.max_payload_bytes=10"),
])
def test_federation_config_names_the_bad_field(field: str, value: object, message: str) -> None:
    from shared.config import FederationConfig

    cfg = FederationConfig(**{field: value})
    with pytest.raises(ConfigError, match=message):
        cfg.validate()
