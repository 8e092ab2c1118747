"""A real deployment on 127.0.0.1: ``flower-superlink`` with TLS and SuperNode authentication, two
``flower-supernode`` processes with registered EC keys, each reading its own data folder, and the condex app
submitted with ``flwr run``; a SuperNode with an unregistered key is refused. Every Flower process is a
subprocess on a free port with its own FLWR_HOME under the test's temporary directory, and is stopped
(process group SIGTERM, then SIGKILL) when the fixture exits."""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from shared.data import LabeledImages

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _load(name: str) -> Any:
    """The deployment scripts are not a package; load them by path (they import their siblings)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / "deploy" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


localfed = _load("localfed")
pki = _load("pki")


def write_site(folder: Path, data: LabeledImages, train: range, test: range) -> Path:
    """A data site's folder as a user would prepare it: train.npz and test.npz (images N x H x W uint8)."""
    folder.mkdir(parents=True)
    for split, idx in (("train", train), ("test", test)):
        part = data.subset(list(idx))
        np.savez(folder / f"{split}.npz", images=part.images[:, 0].numpy(), labels=part.labels.numpy())
    return folder


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory, fmnist_train: LabeledImages) -> Iterator[Any]:
    work = tmp_path_factory.mktemp("deploy")
    sites = {
        "site-a": {"data-dir": str(write_site(work / "data-a", fmnist_train, range(0, 500), range(500, 600))),
                   "dataset": "folder"},
        "site-b": {"data-dir": str(write_site(work / "data-b", fmnist_train, range(600, 1100), range(1100, 1200))),
                   "dataset": "folder"},
    }
    with ExitStack() as stack:
        yield localfed.start_federation(stack, work / "federation", sites)


def test_superlink_serves_tls_with_our_ca(federation: Any) -> None:
    response = httpx.get(f"https://{federation.address}/health", verify=str(federation.certs.ca_cert), timeout=10)
    assert response.status_code == 200
    with pytest.raises(httpx.HTTPError):  # the system trust store does not know our private CA
        httpx.get(f"https://{federation.address}/health", timeout=10)


def test_supernode_with_unregistered_key_is_refused(federation: Any) -> None:
    rogue = pki.make_supernode_keys(federation.workdir / "rogue-keys", "rogue")
    proc = localfed.start_supernode(federation, rogue, {"data-dir": str(federation.workdir)}, localfed.free_port(),
                                    max_wait_s=10)
    try:
        proc.popen.wait(timeout=120)
    finally:
        proc.stop()
    assert proc.popen.returncode not in (0, None)
    assert "Failed to activate SuperNode" in proc.output()
    superlink = federation.processes[0].output()
    assert "No SuperNode found with the given public key" in superlink


def test_flwr_run_on_the_deployment_exports_a_student(federation: Any, tmp_path: Path,
                                                      fmnist_train: LabeledImages) -> None:
    from test_flower_sim import read_report, tiny_overrides, tiny_teacher

    teacher = tiny_teacher(tmp_path / "teacher", fmnist_train)
    overrides = tiny_overrides(teacher, tmp_path / "out") | {"federation.min-nodes": 2}
    output = localfed.run_app(federation, overrides, timeout=900)
    saved = read_report(tmp_path / "out")
    assert saved["status"] == "completed", f"{saved['error']}\n{output[-3000:]}"
    assert saved["nodes"] == 2 and saved["payloads_accepted"] == 2
    assert sorted(p["source"] for p in saved["per_node"]) == sorted(
        f"folder at {federation.workdir.parent / name}" for name in ("data-a", "data-b"))
    assert saved["federated_eval_mean"] is not None
    card = json.loads((Path(saved["student"]["path"]) / "card.json").read_text())
    assert card["role"] == "student" and card["dataset"] == "fashion_mnist"
