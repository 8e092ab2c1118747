"""``condex audit`` and ``shared.privacy.audit`` (issue 11, deliverable 4).

On real Fashion-MNIST images: a payload of random noise reveals nothing (every attack's AUC ~0.5, its
images farther from the training set than held-out images are), a payload of copied training images
reveals everything (AUC ~1, memorisation ratio ~0), in pixel and in teacher-feature space, for the
distance attack and for LiRA with shadow payloads made by the same method (``real`` copies through the
real condenser). A site whose policy sets ``policy-max-mia-auc`` refuses a copied payload with the key
named; ``condex audit`` runs end to end and writes audit.json and its Markdown."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from client import app as client_app
from client.condense import condense
from client.policy import PolicyGuard, site_policy
from client.task import LocalData
from shared import wire
from shared.config import load_config
from shared.config.policy import DEPLOYED, SIMULATED, PolicyRefusal, parse_policy
from shared.data import LabeledImages, few_shot_indices
from shared.errors import CondexError, ConfigError
from shared.privacy.audit import AuditSettings, audit_payload, audit_student, evaluate_attack, teacher_embedding
from shared.privacy.audit.mia import pair_halves

pytestmark = pytest.mark.usefixtures("one_thread")
PER_CLASS = 20  # members per class: a `real` payload with this IPC copies every member


@pytest.fixture(scope="module")
def split(fmnist_train: LabeledImages) -> tuple[LabeledImages, LabeledImages]:
    """Members (20 per class) and non-members (other training images, same distribution)."""
    labels = fmnist_train.labels.numpy()
    chosen = few_shot_indices(labels, 2 * PER_CLASS, seed=7)
    by_class = [chosen[labels[chosen] == c] for c in range(10)]
    members = np.concatenate([idx[:PER_CLASS] for idx in by_class])
    non_members = np.concatenate([idx[PER_CLASS:] for idx in by_class])
    return fmnist_train.subset(members), fmnist_train.subset(non_members)


def real_copies(data: LabeledImages, ipc: int = PER_CLASS) -> torch.Tensor:
    cfg = load_config().condense
    cfg.method, cfg.ipc = "real", ipc
    return condense(data, cfg, progress=False, device="cpu").images


def noise(count: int, seed: int) -> torch.Tensor:
    return torch.rand(count, 1, 28, 28, generator=torch.Generator().manual_seed(seed))


def test_roc_figures_on_known_scores() -> None:
    perfect = evaluate_attack("t", np.arange(100, 200), np.arange(100))
    assert perfect.auc == 1.0 and perfect.tpr_at_1pct_fpr == 1.0 and perfect.tpr_at_01pct_fpr == 1.0
    assert evaluate_attack("t", np.arange(100), np.arange(100, 200)).auc == 0.0
    # 1000 non-members at 0..999; members at 995.5..: TPR at 1% FPR counts members above the 10th highest
    # non-member; at 0.1% FPR, above the highest one but for one
    result = evaluate_attack("t", np.array([995.5, 999.5, 1000.5, -1.0]), np.arange(1000.0))
    assert result.tpr_at_1pct_fpr == 0.75 and result.tpr_at_01pct_fpr == 0.5 and result.fpr_resolution == 0.001
    with pytest.raises(CondexError, match="NaN"):
        evaluate_attack("t", np.array([np.nan]), np.zeros(3))


def test_shadow_halves_are_complementary_and_class_stratified() -> None:
    labels = np.repeat(np.arange(5), 9)
    masks = pair_halves(labels, 4, seed=0)
    assert (masks.sum(0) == 2).all()  # every candidate IN exactly half of the shadows
    assert (masks[0] ^ masks[1]).all() and (masks[2] ^ masks[3]).all()
    assert all(abs(int(masks[0][labels == c].sum()) - 4.5) <= 0.5 for c in range(5))
    with pytest.raises(ConfigError, match="shadows=3"):
        pair_halves(labels, 3, seed=0)


def test_a_noise_payload_reveals_nothing(split: tuple[LabeledImages, LabeledImages], tiny_teacher) -> None:
    members, non_members = split
    net, card = tiny_teacher
    report = audit_payload(noise(100, 0), members, non_members, AuditSettings(shadows=4),
                           teacher=teacher_embedding(net, tuple(card.mean), tuple(card.std)),
                           shadow_condense=lambda half, s: noise(100, 1 + s))
    names = {a.name for a in report.attacks}
    assert {"distance/pixel", "distance/feature", "lira/pixel/online", "lira/pixel/offline",
            "lira/feature/online"} <= names
    for attack in report.attacks:
        assert 0.4 <= attack.auc <= 0.6, attack
    pixel = next(m for m in report.memorization if m.space == "pixel")
    assert pixel.ratio >= 1.0 and pixel.share_below_q05 == 0.0
    assert report.site["candidates_per_side"] == 10 * PER_CLASS


def test_a_payload_of_copies_reveals_every_member(split: tuple[LabeledImages, LabeledImages], tiny_teacher) -> None:
    members, non_members = split
    net, card = tiny_teacher
    report = audit_payload(real_copies(members), members, non_members, AuditSettings(shadows=2),
                           teacher=teacher_embedding(net, tuple(card.mean), tuple(card.std)),
                           shadow_condense=lambda half, s: real_copies(half))
    for attack in report.attacks:
        assert attack.auc >= 0.95, attack
    distance = next(a for a in report.attacks if a.name == "distance/pixel")
    assert distance.tpr_at_1pct_fpr == 1.0
    for m in report.memorization:
        assert m.ratio < 0.1 and m.share_below_q05 >= 0.95, m
    metrics = report.metrics()
    assert metrics["audit-mia-auc"] >= 0.95 and metrics["audit-memorization-ratio"] < 0.1


def test_a_student_trained_on_the_members_is_caught_by_the_loss_attack(
        split: tuple[LabeledImages, LabeledImages]) -> None:
    members, non_members = split
    mean, std = members.info.mean, members.info.std

    def train(data: LabeledImages, seed: int) -> torch.nn.Module:
        """An MLP fitted to its training images until it memorises them (full batch, Adam)."""
        torch.manual_seed(seed)
        net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 128), torch.nn.ReLU(),
                                  torch.nn.Linear(128, 10))
        x = (data.images.float() / 255 - mean[0]) / std[0]
        optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
        for _ in range(80):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(net(x), data.labels).backward()
            optimizer.step()
        return net.eval()

    report = audit_student(train(members, 0), mean, std, members, non_members, AuditSettings(shadows=2), train)
    attacks = {a.name: a for a in report.student_attacks}
    assert attacks["student/loss"].auc >= 0.7  # a student that memorised: members have the lower loss
    assert {"student/lira/online", "student/lira/offline"} <= set(attacks)
    assert attacks["student/lira/online"].auc > 0.5


def test_audit_thresholds_are_parsed_and_validated() -> None:
    policy = parse_policy({"policy-max-mia-auc": "0.6", "policy-max-memorization": "none"}, SIMULATED)
    assert policy.max_mia_auc == 0.6 and policy.max_memorization is None and policy.audits
    assert "policy-max-mia-auc=0.6" in policy.describe()
    assert parse_policy({}, SIMULATED).audits and not parse_policy({}, DEPLOYED).audits  # policy-audit defaults
    assert parse_policy({"policy-audit": "true"}, DEPLOYED).audits
    assert not parse_policy({"policy-audit": False}, SIMULATED).audits
    with pytest.raises(ConfigError, match="policy-audit=1 must be true or false"):
        parse_policy({"policy-audit": 1}, SIMULATED)
    with pytest.raises(ConfigError, match=r"policy-max-mia-auc='1\.5' must be in"):
        parse_policy({"policy-max-mia-auc": "1.5"}, SIMULATED)
    with pytest.raises(ConfigError, match="policy-max-memorization='x' is not a number"):
        parse_policy({"policy-max-memorization": "x"}, SIMULATED)


def test_a_site_with_an_auc_threshold_refuses_a_payload_of_copies(
        split: tuple[LabeledImages, LabeledImages], tmp_path: Path) -> None:
    members, non_members = split
    local = LocalData(members, non_members, "unit site")
    cfg = client_app.node_config(_context(), {"condense.method": "real", "condense.ipc": PER_CLASS})
    node = {"partition-id": 0, "num-partitions": 20, "policy-max-mia-auc": "0.6",
            "policy-ledger": str(tmp_path / "ledger.json")}
    with pytest.raises(PolicyRefusal, match=r"policy-max-mia-auc=0.6: the payload's strongest .* AUC 1 "):
        client_app.condense_content(local, cfg, PolicyGuard(site_policy(node)))
    assert not (tmp_path / "ledger.json").exists()  # refused before release: nothing charged
    # below the threshold the payload leaves, with its audit figures in the reply's metrics
    lenient = PolicyGuard(site_policy(node | {"policy-max-mia-auc": "1", "policy-ledger": "none"}))
    content = client_app.condense_content(local, cfg, lenient)
    metrics = wire.node_metrics(content)
    assert metrics["audit-mia-auc"] >= 0.95 and metrics["audit-memorization-share"] >= 0.95


def test_a_site_node_refuses_a_memorised_payload_with_the_policy_key_in_its_error_reply(
        tmp_path: Path, split: tuple[LabeledImages, LabeledImages]) -> None:
    """The ClientApp's own path: a node with its data folder (train and test split) and the threshold in
    its node config, a `real` request (copied images): an error reply with the policy code, nothing charged."""
    site = tmp_path / "site"
    site.mkdir()
    for name, part in zip(("train", "test"), split, strict=True):
        np.savez(site / f"{name}.npz", images=part.images[:, 0].numpy(), labels=part.labels.numpy())
    node = {"data-dir": str(site), "policy-require-dp": "false", "policy-max-memorization": "0.05",
            "policy-ledger": str(tmp_path / "ledger.json")}
    reply = client_app.handle_condense(_message({"condense.method": "real", "condense.ipc": 5}), _context(node))
    assert reply.has_error() and reply.error.code == client_app.ERR_POLICY, reply.error.reason
    assert reply.error.reason.startswith("PolicyRefusal: policy-max-memorization=0.05: 100.0% of the payload's "
                                         "images are closer to a training image"), reply.error.reason
    assert not (tmp_path / "ledger.json").exists()


def test_condex_audit_writes_audit_json_and_enforces_its_threshold(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from shared.cli import main

    data = ["--dataset", "fashion_mnist", "--few-shot", "10"]  # the whole training split, 10 per class
    payload = tmp_path / "site.safetensors"
    assert main(["condense", *data, "--method", "real", "--ipc", "10", "--output", str(payload), "--quiet"]) == 0
    out = tmp_path / "audit" / "audit.json"
    code = main(["audit", "--payload", str(payload), *data, "--shadows", "2", "--output", str(out), "--quiet",
                 "--policy-max-mia-auc", "0.9"])
    captured = capsys.readouterr()
    assert code == 2 and "policy-max-mia-auc=0.9" in captured.err  # copies: AUC 1 > 0.9
    report = json.loads(out.read_text())
    assert report["subject"]["method"] == "real" and report["site"]["candidates_per_side"] == 100
    assert report["summary"]["max_auc"] >= 0.95 and report["summary"]["pixel_memorization_ratio"] < 0.1
    assert {a["name"] for a in report["attacks"]} == {"distance/pixel", "lira/pixel/online", "lira/pixel/offline"}
    assert out.with_suffix(".md").read_text().startswith("# condex audit") and "distance/pixel" in captured.out
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temporary left behind


def test_condex_audit_names_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from shared.cli import main

    assert main(["audit", "--payload", str(tmp_path / "missing.safetensors"), "--quiet"]) == 2
    assert "missing.safetensors does not exist" in capsys.readouterr().err
    assert main(["audit", "--payload", "x", "--shadows", "3"]) == 2
    assert "shadows=3 must be 0" in capsys.readouterr().err
    assert main(["audit", "--payload", "x", "--policy-max-mia-auc", "2"]) == 2
    assert "condex audit --policy-max-mia-auc='2' must be in [0, 1]" in capsys.readouterr().err
    assert main(["audit", "--payload", "x", "--shadow-time-budget", "0"]) == 2
    assert "--shadow-time-budget=0.0 must be > 0" in capsys.readouterr().err


def test_condex_audit_attacks_a_student_checkpoint(tmp_path: Path, fmnist_train: LabeledImages,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from shared.checkpoint import card_for_dataset, save_checkpoint
    from shared.cli import main
    from shared.models import build_model

    data = ["--dataset", "fashion_mnist", "--few-shot", "5", "--set", "data.seed=1"]
    payload = tmp_path / "site.safetensors"
    assert main(["condense", *data, "--method", "real", "--ipc", "5", "--output", str(payload), "--quiet"]) == 0
    torch.manual_seed(0)
    student = tmp_path / "student"
    save_checkpoint(student, build_model("resnet8", 10, 1, 28, width=4),
                    card_for_dataset(fmnist_train.info, "resnet8", {"width": 4}, role="student"))
    out = tmp_path / "audit.json"
    assert main(["audit", "--payload", str(payload), *data, "--student", str(student), "--student-shadows", "2",
                 "--student-shadow-epochs", "1", "--output", str(out), "--quiet"]) == 0
    report = json.loads(out.read_text())
    assert {a["name"] for a in report["student_attacks"]} == {"student/loss", "student/lira/online",
                                                              "student/lira/offline"}
    assert report["settings"]["shadow_iterations"] == [0, 0] and "student/loss" in capsys.readouterr().out


def _context(node: dict | None = None) -> object:
    from flwr.app import Context, RecordDict

    return Context(1, 1, node or {"partition-id": 0, "num-partitions": 20}, RecordDict(), {})


def _message(request: dict | None = None) -> object:
    from flwr.app import Message
    from flwr.common.constant import SUPERLINK_NODE_ID
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, SUPERLINK_NODE_ID
    return Message(wire.request_to_content(request or {}), dst_node_id=1, message_type="query.condense")
