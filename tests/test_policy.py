"""The site-side privacy policy and the lifetime RDP ledger (issue 11, deliverables 2 and 3).

A site refuses what its policy does not allow (method, DP, epsilon, delta, IPC, lifetime budget) with an
error reply naming the policy key and value, and the server's report shows that reason per node (a real
Flower simulation below). The ledger composes the RDP parameters of every released run, refuses a run that
would exceed the lifetime budget and survives a crash mid-write. DP payloads carry no class counts, and a
folder site normalises with the server's statistics. Sizes are tiny: a few DP-DM iterations on 200 images."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from flwr.app import Context, Message, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.supercore.task_identity import TaskIdentity
from opacus.accountants import RDPAccountant

import client.condense as condense_package
import shared.privacy.ledger as ledger_module
from client import app as client_app
from client.policy import PolicyGuard, planned_mechanism, site_policy
from client.task import NEUTRAL_MEAN, LocalData, load_local_data
from server.flower import app as server_app
from server.flower.report import REFUSED
from shared import wire
from shared.checkpoint import card_for_dataset, save_checkpoint
from shared.config.policy import DEPLOYED, SIMULATED, PolicyRefusal, default_policy, parse_policy
from shared.data import LabeledImages, few_shot_indices
from shared.errors import ConfigError
from shared.models import build_model
from shared.payload import DP_PRIVATE_FIELDS, META_KEY
from shared.privacy import LedgerEntry, Mechanism, PrivacyLedger, compose, epsilon_for

pytestmark = pytest.mark.usefixtures("one_thread")

SIM = {"partition-id": 0, "num-partitions": 20}
TINY = {"condense.ipc": 1, "condense.iterations": 3, "condense.batch-real": 4, "condense.model-width": 8,
        "condense.dsa": False}
DP_RUN = TINY | {"condense.method": "dp-dm", "condense.noise-multiplier": 1.0, "condense.sample-rate": 0.1}


@pytest.fixture(scope="module")
def site(fmnist_train: LabeledImages) -> LabeledImages:
    return fmnist_train.subset(few_shot_indices(fmnist_train.labels.numpy(), 20, seed=4))


@pytest.fixture(scope="module")
def local(site: LabeledImages) -> LocalData:
    return LocalData(site, site.subset(range(20)), "unit site")


@pytest.fixture(autouse=True)
def _task_identity() -> None:
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, SUPERLINK_NODE_ID


def context(node_config: dict[str, Any]) -> Context:
    return Context(1, 1, dict(node_config), RecordDict(), {})


def config(request: dict[str, Any]) -> Any:
    return client_app.node_config(context(SIM), request)


def guard(node_config: dict[str, Any]) -> PolicyGuard:
    return PolicyGuard(site_policy(node_config))


def condense_message(request: dict[str, Any], **expect: Any) -> Message:
    return Message(wire.request_to_content(request, **expect), dst_node_id=1, message_type="query.condense")


def write_folder_site(folder: Path, data: LabeledImages, train: int = 60, test: int = 20) -> Path:
    folder.mkdir(parents=True)
    for split, idx in (("train", range(train)), ("test", range(train, train + test))):
        part = data.subset(list(idx))
        np.savez(folder / f"{split}.npz", images=part.images[:, 0].numpy(), labels=part.labels.numpy())
    return folder


# ---- the policy itself -------------------------------------------------------------------------------------
def test_deployed_and_simulated_sites_get_their_defaults(tmp_path: Path) -> None:
    deployed = site_policy({"data-dir": str(tmp_path), "dataset": "folder"})
    assert deployed == default_policy(DEPLOYED)
    assert (deployed.require_dp, deployed.max_epsilon, deployed.max_delta) == (True, 10.0, 1e-5)
    simulated = site_policy(SIM)
    assert simulated.kind == SIMULATED and "dm" in simulated.methods and not simulated.require_dp
    simulated.check_request(config({"condense.method": "dm"}).condense)  # the default job runs in simulation
    with pytest.raises(PolicyRefusal, match=r"^policy-require-dp=true: condense\.method='dm'"):
        deployed.check_request(config({"condense.method": "dm"}).condense)


def test_node_config_keys_are_parsed_typed_and_override_the_defaults(tmp_path: Path) -> None:
    policy = site_policy({"data-dir": str(tmp_path), "policy-methods": "dp-dm,dp-gm", "policy-require-dp": True,
                          "policy-max-epsilon": 10, "policy-max-delta": 1e-5, "policy-max-ipc": 50,
                          "policy-lifetime-epsilon": 30, "policy-ledger": str(tmp_path / "ledger.json")})
    assert policy.methods == ("dp-dm", "dp-gm") and policy.max_ipc == 50 and policy.lifetime_epsilon == 30.0
    assert isinstance(policy.max_epsilon, float) and policy.ledger == str(tmp_path / "ledger.json")
    lifted = parse_policy({"policy-max-epsilon": "none", "policy-require-dp": "false"}, DEPLOYED)
    assert lifted.max_epsilon is None and not lifted.require_dp and lifted.max_delta == 1e-5
    # the code building the ClientApp may fix entries; the node config's own keys win
    fixed = site_policy(SIM | {"policy-max-ipc": 3}, fixed={"policy-max-ipc": 1, "policy-max-epsilon": 2})
    assert (fixed.max_ipc, fixed.max_epsilon) == (3, 2.0)


@pytest.mark.parametrize(("values", "match"), [
    ({"policy-require-dp": 1}, r"policy-require-dp=1 must be true or false"),
    ({"policy-evaluate": "yes"}, r"policy-evaluate='yes' must be true or false"),
    ({"policy-max-epsilon": float("nan")}, r"policy-max-epsilon=nan must be finite"),
    ({"policy-max-epsilon": float("inf")}, r"policy-max-epsilon=inf must be finite"),
    ({"policy-max-epsilon": 0}, r"policy-max-epsilon=0 must be > 0"),
    ({"policy-max-epsilon": True}, r"policy-max-epsilon=True is a boolean"),
    ({"policy-max-epsilon": "ten"}, r"policy-max-epsilon='ten' is not a number"),
    ({"policy-max-delta": 1.0}, r"policy-max-delta=1.0 must be in \(0, 1\)"),
    ({"policy-lifetime-delta": 0}, r"policy-lifetime-delta=0 must be in \(0, 1\)"),
    ({"policy-max-ipc": 2.5}, r"policy-max-ipc=2.5 must be an integer >= 1"),
    ({"policy-max-ipc": 0}, r"policy-max-ipc=0 must be an integer >= 1"),
    ({"policy-max-ipc": False}, r"policy-max-ipc=False is a boolean"),
    ({"policy-methods": "dp-dm,mtt"}, r"unknown method\(s\) mtt"),
    ({"policy-methods": ""}, r"policy-methods='' must name at least one method"),
    ({"policy-ledger": 3}, r"policy-ledger=3 must be a file path"),
    ({"policy-lifetime-epsilon": 30}, r"policy-lifetime-epsilon=30 needs policy-ledger"),
    ({"policy-methods": "dm,real"}, r"policy-require-dp=true but policy-methods=dm,real holds no DP method"),
    ({"policy-max-epsilion": 5}, r"unknown policy key 'policy-max-epsilion'"),
])
def test_every_policy_value_is_validated_with_the_key_named(values: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        parse_policy(values, DEPLOYED)


def test_cli_flags_are_named_as_flags_in_errors() -> None:
    with pytest.raises(ConfigError, match=r"condex condense --policy-max-epsilon='-1' must be > 0"):
        parse_policy({"policy-max-epsilon": "-1"}, SIMULATED, spell="condex condense")


# ---- refusals at the ClientApp --------------------------------------------------------------------------
@pytest.mark.parametrize(("policy", "request_", "reason"), [
    ({"policy-methods": "dp-dm"}, {"condense.method": "dm"}, "policy-methods=dp-dm: condense.method='dm'"),
    ({"policy-require-dp": True}, {"condense.method": "real"}, "policy-require-dp=true: condense.method='real'"),
    ({"policy-max-epsilon": 4}, {"condense.method": "dp-dm", "condense.epsilon": 8.0},
     "policy-max-epsilon=4: condense.epsilon=8 is above"),
    ({"policy-max-delta": 1e-6}, {"condense.method": "dp-dm", "condense.epsilon": 2.0, "condense.delta": 1e-5},
     "policy-max-delta=1e-06: condense.delta=1e-05"),
    ({"policy-max-ipc": 1}, {"condense.method": "dm", "condense.ipc": 2}, "policy-max-ipc=1: condense.ipc=2"),
    ({"policy-lifetime-epsilon": 5, "policy-ledger": "LEDGER"}, {"condense.method": "dm"},
     "policy-lifetime-epsilon=5: condense.method='dm' is not DP"),
])
def test_each_out_of_policy_request_gets_a_refusal_naming_the_policy_key(
        tmp_path: Path, policy: dict[str, Any], request_: dict[str, Any], reason: str) -> None:
    policy = {k: str(tmp_path / "ledger.json") if v == "LEDGER" else v for k, v in policy.items()}
    reply = client_app.handle_condense(condense_message(request_), context(SIM | policy))
    assert reply.has_error() and reply.error.code == client_app.ERR_POLICY == 104
    assert reply.error.reason.startswith(f"PolicyRefusal: {reason}"), reply.error.reason
    assert not (tmp_path / "ledger.json").exists()  # a refused request charges nothing


def test_a_deployed_site_refuses_non_dp_and_large_epsilon_by_default(tmp_path: Path) -> None:
    node = {"data-dir": str(tmp_path), "dataset": "folder"}
    reply = client_app.handle_condense(condense_message({"condense.method": "dm"}), context(node))
    assert reply.error.code == client_app.ERR_POLICY and "policy-require-dp=true" in reply.error.reason
    request = {"condense.method": "dp-dm", "condense.epsilon": 12.0}
    reply = client_app.handle_condense(condense_message(request), context(node))
    assert reply.error.code == client_app.ERR_POLICY and "policy-max-epsilon=10: condense.epsilon=12" in \
        reply.error.reason


def test_a_bad_policy_value_is_a_config_error_reply() -> None:
    reply = client_app.handle_condense(condense_message({"condense.method": "dm"}),
                                       context(SIM | {"policy-max-epsilon": "lots"}))
    assert reply.error.code == client_app.ERR_CONFIG and "policy-max-epsilon='lots'" in reply.error.reason


def test_a_fixed_noise_multiplier_is_refused_on_its_planned_epsilon_before_condensing(
        local: LocalData, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = config(DP_RUN | {"condense.noise-multiplier": 0.5})  # no target epsilon: known once the data is
    planned = compose([planned_mechanism(local.train, cfg.condense)], cfg.condense.delta)
    assert planned > 1.0

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("a refused run must not condense")

    monkeypatch.setattr(condense_package, "condense", never)
    with pytest.raises(PolicyRefusal, match=r"^policy-max-epsilon=1: the planned epsilon of this run"):
        client_app.condense_content(local, cfg, guard(SIM | {"policy-max-epsilon": 1}))


def test_planned_mechanism_is_the_one_the_run_uses(local: LocalData) -> None:
    for request in (DP_RUN, TINY | {"condense.method": "dp-dm", "condense.epsilon": 3.0}):
        cfg = config(request)
        planned = planned_mechanism(local.train, cfg.condense)
        content = client_app.condense_content(local, cfg, guard(SIM))
        assert wire.payload_from_content(content).meta.dp_steps == planned.steps == 3
        assert compose([planned], cfg.condense.delta) == pytest.approx(wire.node_metrics(content)["epsilon"])


def test_evaluation_follows_the_policy(tmp_path: Path, fmnist_train: LabeledImages) -> None:
    folder = write_folder_site(tmp_path / "site", fmnist_train)
    card = card_for_dataset(fmnist_train.info, "lenet5", {}, role="student")
    student = build_model("lenet5", 10, 1, 28)
    message = Message(wire.student_to_content(student, card), dst_node_id=1, message_type="evaluate")
    node = {"data-dir": str(folder)}
    dp_only = client_app.handle_evaluate(message, context(node)).content[wire.EVAL_METRICS]
    assert "accuracy" in dp_only and "num-examples" not in dp_only  # the held-out count stays at a DP-only site
    open_site = client_app.handle_evaluate(message, context(node | {"policy-require-dp": False}))
    assert open_site.content[wire.EVAL_METRICS]["num-examples"] == 20
    refused = client_app.handle_evaluate(message, context(node | {"policy-evaluate": False}))
    assert refused.error.code == client_app.ERR_POLICY and refused.error.reason.startswith(
        "PolicyRefusal: policy-evaluate=false")


# ---- the ledger --------------------------------------------------------------------------------------------
def opacus_epsilon(mechanisms: list[Mechanism], delta: float) -> float:
    reference = RDPAccountant()
    for m in mechanisms:
        for _ in range(m.steps):
            reference.step(noise_multiplier=m.noise_multiplier, sample_rate=m.sample_rate)
    return reference.get_epsilon(delta)


def test_ledger_composes_runs_with_rdp_and_refuses_past_the_lifetime_budget(local: LocalData, tmp_path: Path) -> None:
    ledger_path = tmp_path / "site" / "ledger.json"
    per_run = epsilon_for(1.0, 0.1, 3, 1e-5)
    two_runs = compose([Mechanism(1.0, 0.1, 3)] * 2, 1e-5)
    assert per_run < two_runs < 2 * per_run  # RDP composition is tighter than adding epsilons
    node = SIM | {"policy-ledger": str(ledger_path), "policy-lifetime-epsilon": two_runs * 1.001}
    for _ in range(2):
        client_app.condense_content(local, config(DP_RUN), guard(node))
    ledger = PrivacyLedger(ledger_path)
    entries = ledger.entries()
    assert [e.method for e in entries] == ["dp-dm", "dp-dm"] and all(e.dp for e in entries)
    assert entries[0].mechanisms == (Mechanism(1.0, 0.1, 3),) and entries[0].epsilon == pytest.approx(per_run)
    mechanisms = [m for e in entries for m in e.mechanisms]
    assert ledger_module.lifetime_epsilon(entries, 1e-5) == pytest.approx(opacus_epsilon(mechanisms, 1e-5), rel=1e-9)
    before = ledger_path.read_bytes()
    # a third run would exceed the budget: refused at the plan, before condensing, and nothing is charged
    with pytest.raises(PolicyRefusal, match=r"^policy-lifetime-epsilon=[\d.]+: this run \(epsilon [\d.]+ at delta "
                                            r"1e-05\) would bring the site's lifetime epsilon to [\d.]+ .*2 run\(s\)"):
        client_app.condense_content(local, config(DP_RUN), guard(node))
    assert ledger_path.read_bytes() == before
    # the same refusal through the ClientApp, as the server sees it
    reply = client_app.handle_condense(condense_message(DP_RUN), context(node))
    assert reply.error.code == client_app.ERR_POLICY and "policy-lifetime-epsilon=" in reply.error.reason


def test_the_ledger_is_checked_again_under_its_lock_when_the_payload_is_released(local: LocalData,
                                                                                 tmp_path: Path) -> None:
    """Two runs at one site planned against the same ledger: the second to release is refused."""
    path = tmp_path / "ledger.json"
    node = SIM | {"policy-ledger": str(path), "policy-lifetime-epsilon": epsilon_for(1.0, 0.1, 3, 1e-5) * 1.01}
    slow = guard(node)
    cfg = config(DP_RUN)
    slow.check_plan(local.train, cfg.condense)  # fits: nothing spent yet
    client_app.condense_content(local, cfg, guard(node))  # another run of the site releases meanwhile
    payload = condense_package.condense(local.train, cfg.condense, progress=False)
    with pytest.raises(PolicyRefusal, match=r"policy-lifetime-epsilon=.*1 run"):
        slow.release(payload)
    assert len(PrivacyLedger(path).entries()) == 1


def test_a_non_dp_release_makes_the_lifetime_epsilon_unbounded(local: LocalData, tmp_path: Path) -> None:
    path = tmp_path / "ledger.json"
    client_app.condense_content(local, config(TINY | {"condense.method": "real"}), guard(SIM | {"policy-ledger":
                                                                                              str(path)}))
    (entry,) = PrivacyLedger(path).entries()
    assert (entry.method, entry.dp, entry.mechanisms) == ("real", False, ())
    with pytest.raises(PolicyRefusal, match=r"policy-lifetime-epsilon=100: the site's lifetime budget is spent: "
                                            r"epsilon inf"):
        guard(SIM | {"policy-ledger": str(path), "policy-lifetime-epsilon": 100}).check_request(config(DP_RUN).condense)


def test_the_ledger_survives_a_crash_between_write_and_replace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "ledger.json"
    ledger = PrivacyLedger(path)
    ledger.charge(LedgerEntry("dp-dm", True, (Mechanism(1.0, 0.1, 3),), 1.2, 1e-5), 1e-5, None)
    old = path.read_bytes()
    calls: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        calls.append("fsync")
        real_fsync(fd)

    def crash(src: str, dst: str) -> None:
        calls.append("replace")
        assert Path(src).parent == path.parent and Path(src).read_bytes() != old  # the new content is written
        raise OSError("simulated power loss between write and replace")

    monkeypatch.setattr(ledger_module.os, "fsync", fsync)
    monkeypatch.setattr(ledger_module.os, "replace", crash)
    with pytest.raises(OSError, match="simulated power loss"):
        ledger.charge(LedgerEntry("dp-dm", True, (Mechanism(1.0, 0.1, 3),), 1.2, 1e-5), 1e-5, None)
    assert calls == ["fsync", "replace"]  # the data reached the disk before the rename was attempted
    assert path.read_bytes() == old and len(ledger.entries()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ledger.json", "ledger.json.lock"]  # no temp file left
    monkeypatch.undo()
    # a writer killed outright leaves its temp file: readers ignore it, the next locked write removes it
    (tmp_path / ".ledger.json.dead.tmp").write_text("{half")
    assert len(ledger.entries()) == 1
    ledger.charge(LedgerEntry("real", False), 1e-5, None)
    assert [e.method for e in ledger.entries()] == ["dp-dm", "real"]
    assert not list(tmp_path.glob(".ledger.json.*"))


def test_an_unreadable_ledger_refuses_everything(local: LocalData, tmp_path: Path) -> None:
    path = tmp_path / "ledger.json"
    path.write_text('{"format": "something else"}')
    with pytest.raises(ConfigError, match=r"not a condex privacy ledger.*restore the file from a backup"):
        client_app.condense_content(local, config(DP_RUN), guard(SIM | {"policy-ledger": str(path)}))
    path.write_text("{trunc")
    with pytest.raises(ConfigError, match="is not valid JSON"):
        PrivacyLedger(path).entries()


# ---- nothing private in the clear -------------------------------------------------------------------------
def test_dp_payloads_carry_no_class_counts(local: LocalData, tmp_path: Path) -> None:
    dp = client_app.condense_content(local, config(DP_RUN))
    sent = dict(dp[wire.PAYLOAD_META])
    assert not set(DP_PRIVATE_FIELDS) & set(sent)  # no local_class_counts, sample_rate, noise_multiplier
    assert sent["epsilon"] > 0 and sent["dp_steps"] == 3
    assert {"local-train", "local-test"}.isdisjoint(wire.node_metrics(dp))
    assert wire.payload_from_content(dp).meta.local_class_counts is None
    non_dp = client_app.condense_content(local, config(TINY | {"condense.method": "real"}))
    assert dict(non_dp[wire.PAYLOAD_META])["local_class_counts"] == [20] * 10  # kept, documented as revealed
    assert wire.node_metrics(non_dp)["local-train"] == 200
    # the payload file of `condex condense` holds what a reply holds
    from shared.cli import main

    out = tmp_path / "dp.safetensors"
    code = main(["condense", "--partition", "iid", "--num-partitions", "60", "--method", "dp-dm", "--ipc", "1",
                 "--iterations", "2", "--noise-multiplier", "1.0", "--set", "condense.model_width=8",
                 "--set", "condense.batch_real=4", "--set", "condense.dsa=false", "--quiet", "--output", str(out),
                 "--policy-ledger", str(tmp_path / "ledger.json")])
    assert code == 0
    from safetensors import safe_open

    with safe_open(str(out), framework="np") as handle:
        header = json.loads(handle.metadata()[META_KEY])
    assert not set(DP_PRIVATE_FIELDS) & set(header) and header["method"] == "dp-dm"
    assert len(PrivacyLedger(tmp_path / "ledger.json").entries()) == 1


def test_condex_condense_refuses_with_the_policy_flag_named(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                            fmnist_train: LabeledImages) -> None:
    from shared.cli import main

    folder = write_folder_site(tmp_path / "site", fmnist_train)
    code = main(["condense", "--dataset", "folder", "--data-root", str(folder), "--method", "dm",
                 "--output", str(tmp_path / "x.safetensors")])
    assert code == 2 and "policy-require-dp=true" in capsys.readouterr().err  # folder data: a deployed site
    code = main(["condense", "--method", "dp-dm", "--epsilon", "3", "--policy-max-epsilon", "2",
                 "--output", str(tmp_path / "x.safetensors")])
    assert code == 2 and "policy-max-epsilon=2: condense.epsilon=3" in capsys.readouterr().err
    assert not (tmp_path / "x.safetensors").exists()


def test_a_folder_site_normalises_with_the_servers_statistics(tmp_path: Path, fmnist_train: LabeledImages) -> None:
    folder = write_folder_site(tmp_path / "site", fmnist_train)
    own = load_local_data({"data-dir": str(folder)}, config({}).data, 10, stats=None)
    assert own.train.info.mean == (NEUTRAL_MEAN,)  # no query statistics: neutral, not the folder's own
    served = load_local_data({"data-dir": str(folder)}, config({}).data, 10, stats=((0.25,), (0.5,)))
    assert served.train.info.mean == (0.25,) and served.test.info.std == (0.5,)
    # through the ClientApp, at a deployed site with its default policy (a DP-DM request)
    request = TINY | {"condense.method": "dp-dm", "condense.epsilon": 5.0}
    reply = client_app.handle_condense(condense_message(request, num_classes=10, mean=[0.25], std=[0.5]),
                                       context({"data-dir": str(folder), "dataset": "folder"}))
    assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
    meta = wire.payload_from_content(reply.content).meta
    assert (meta.mean, meta.std, meta.dataset) == ([0.25], [0.5], "folder")
    private = fmnist_train.subset(range(60)).images.float().div(255)
    assert abs(meta.mean[0] - float(private.mean())) > 0.01  # what the folder loader would have sent


def test_the_servers_query_carries_the_teachers_statistics(fmnist_train: LabeledImages) -> None:
    card = card_for_dataset(fmnist_train.info, "resnet8", {"width": 4}, role="teacher")
    card.mean, card.std = [0.3], [0.4]
    cfg = server_app.server_config({}, {})
    seen: list[Any] = []

    class Recorder:
        def __call__(self, msg: Message, ctx: Context) -> Message:
            seen.append(wire.expected_stats(msg.content))
            return client_app.error_reply(msg, PolicyRefusal("policy-methods", ("dp-gm",), "test"))

    from test_flower_sim import LocalGrid

    grid = LocalGrid({1: (Recorder(), SIM)}, run_config={})  # type: ignore[dict-item]
    collected = server_app.collect_payloads(grid, [1], cfg, server_app.payload_spec(card, cfg))
    assert seen == [((0.3,), (0.4,))]
    (outcome,) = collected.outcomes
    assert outcome.status == REFUSED and outcome.reason == "node error 104: PolicyRefusal: policy-methods=dp-gm: test"


# ---- a real Flower simulation: the report names each node's refusal ---------------------------------------
@pytest.fixture(autouse=True)
def _flower_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr-home"))
    monkeypatch.setenv("FLWR_TELEMETRY_ENABLED", "0")
    monkeypatch.setenv("FLWR_DISABLE_UPDATE_CHECK", "1")


SIM_POLICIES = {  # partition id -> the site's policy, and the reason its refusal must give
    0: ({"policy-methods": "dp-gm"}, "policy-methods=dp-gm: condense.method='dp-dm' is not allowed"),
    1: ({"policy-max-epsilon": 4}, "policy-max-epsilon=4: condense.epsilon=8 is above"),
    2: ({"policy-max-ipc": 1}, "policy-max-ipc=1: condense.ipc=2 asks for more"),
}


@pytest.mark.slow
def test_flower_simulation_report_names_each_sites_refusal(tmp_path: Path, fmnist_train: LabeledImages) -> None:
    from test_flower_sim import policy_app, read_report, simulation_config, tiny_overrides

    from simulations.run import simulate

    # an untrained teacher is enough: every site refuses, so nothing is distilled
    card = card_for_dataset(fmnist_train.info, "resnet8", {"width": 4}, role="teacher")
    torch.manual_seed(0)
    teacher = save_checkpoint(tmp_path / "teacher", build_model("resnet8", 10, 1, 28, width=4).eval(), card)
    cfg = simulation_config(tiny_overrides(teacher, tmp_path / "out"))  # dp-dm, epsilon 8, IPC 2, 3 nodes
    app = policy_app(tmp_path / "app", {k: policy for k, (policy, _) in SIM_POLICIES.items()})
    simulate(cfg, tmp_path / "out", app_dir=app, timeout=600)
    saved = read_report(tmp_path / "out")
    assert saved["status"] == "failed" and "0 of 3" in saved["error"]  # nobody sent a payload: no distillation
    assert saved["requests_refused"] == 3 and saved["payloads_accepted"] == 0
    reasons = {r["reason"] for r in saved["rejections"]}
    assert {r["status"] for r in saved["rejections"]} == {REFUSED}
    for _, expected in SIM_POLICIES.values():  # one node per policy, each with its own reason, intact
        assert sum(f"node error 104: PolicyRefusal: {expected}" in r for r in reasons) == 1, reasons
    markdown = next((tmp_path / "out").glob("federated-*/report.md")).read_text()
    assert all(expected in markdown for _, expected in SIM_POLICIES.values())

