"""A real deployment on loopback: ``flower-superlink`` with TLS and SuperNode authentication listening on
127.0.0.1 only, the Fleet gateway on 127.0.0.2 (the "public interface": Linux routes all of 127.0.0.0/8 to
loopback), two ``flower-supernode`` processes with registered EC keys connecting through the gateway, each
reading its own data folder, and the condex app submitted with ``flwr run``; a SuperNode with an unregistered
key is refused, and an outsider holding ``ca.crt`` can neither register a key, list runs nor run an app. Every
process is a subprocess on a free port with its own FLWR_HOME under the test's temporary directory, and is
stopped (process group SIGTERM, then SIGKILL) when the fixture exits."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import time
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


def _public_host() -> str | None:
    """127.0.0.2 as the public interface when this machine routes it (Linux does), else None."""
    try:
        localfed.free_port("127.0.0.2")
    except OSError:
        return None
    return "127.0.0.2"


PUBLIC_HOST = _public_host()
needs_public_host = pytest.mark.skipif(PUBLIC_HOST is None, reason="127.0.0.2 is not a local address here")


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
        yield localfed.start_federation(stack, work / "federation", sites, public_host=PUBLIC_HOST or localfed.HOST)


def test_superlink_serves_tls_with_our_ca(federation: Any) -> None:
    ours = ssl.create_default_context(cafile=str(federation.certs.ca_cert))
    for address in (federation.control_address, federation.fleet_address):
        response = httpx.get(f"https://{address}/health", verify=ours, timeout=10)
        assert response.status_code == 200
        with pytest.raises(httpx.HTTPError):  # the system trust store does not know our private CA
            httpx.get(f"https://{address}/health", timeout=10)


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


# --- an outsider with ca.crt (issue 13.1) -----------------------------------------------------------------------

OUTSIDER = "outsider"


def _listening(pids: set[int] | None = None) -> set[tuple[str, int]]:
    """TCP listening sockets (address, port) from /proc/net/tcp{,6}; only those of ``pids`` when given."""
    inodes = None
    if pids is not None:
        inodes = set()
        for pid in pids:
            try:
                fds = os.listdir(f"/proc/{pid}/fd")
            except OSError:
                continue
            for fd in fds:
                try:
                    link = os.readlink(f"/proc/{pid}/fd/{fd}")
                except OSError:
                    continue
                if link.startswith("socket:["):
                    inodes.add(link[8:-1])
    found = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        if not os.path.exists(table):
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state != "0A" or (inodes is not None and inode not in inodes):  # 0A = TCP_LISTEN
                continue
            hex_ip, hex_port = local.split(":")
            assert len(hex_ip) == width
            raw = b"".join(bytes.fromhex(hex_ip[i:i + 8])[::-1] for i in range(0, width, 8))
            ip = socket.inet_ntop(socket.AF_INET if width == 8 else socket.AF_INET6, raw)
            found.add((ip, int(hex_port, 16)))
    return found


def _process_group(pid: int) -> set[int]:
    """Every process in ``pid``'s process group (the SuperLink and the SuperExec / ServerApps it spawned)."""
    pgid = os.getpgid(pid)
    members = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.getpgid(int(entry)) == pgid:
                    members.add(int(entry))
            except OSError:
                pass
    return members


@pytest.mark.skipif(not os.path.exists("/proc/net/tcp"), reason="needs Linux /proc/net/tcp")
def test_control_api_listens_on_loopback_only(federation: Any) -> None:
    port = federation.superlink_port
    assert {sock for sock in _listening() if sock[1] == port} == {("127.0.0.1", port)}  # not 0.0.0.0, ::, .2
    superlink = _process_group(federation.processes[0].popen.pid)
    own = _listening(superlink)
    assert own and all(ip == "127.0.0.1" for ip, _ in own), own  # no other SuperLink API anywhere else
    gateway = {sock for sock in _listening() if sock[1] == federation.fleet_port}
    assert gateway == {(federation.public_host, federation.fleet_port)}
    if shutil.which("ss"):  # the same from iproute2's point of view
        out = subprocess.run(["ss", "-ltnH"], capture_output=True, text=True, check=True).stdout
        bound = [line.split()[3] for line in out.splitlines() if line.split()[3].endswith(f":{port}")]
        assert bound == [f"127.0.0.1:{port}"], out


def _outsider_app(folder: Path, marker: Path) -> Path:
    """The outsider's own Flower app: its ServerApp leaves ``marker`` behind wherever it runs."""
    folder.mkdir(parents=True)
    (folder / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["hatchling"]\nbuild-backend = "hatchling.build"\n\n'
        '[project]\nname = "intruder"\nversion = "1.0.0"\ndescription = "x"\nlicense = "MIT"\n'
        'dependencies = ["flwr"]\n\n[tool.flwr.app]\npublisher = "outsider"\n\n'
        '[tool.flwr.app.components]\nserverapp = "intruder:app"\nclientapp = "intruder:client"\n\n'
        "[tool.flwr.app.config]\n", encoding="utf-8")
    (folder / "intruder.py").write_text(
        "from pathlib import Path\n\nfrom flwr.clientapp import ClientApp\nfrom flwr.serverapp import ServerApp\n\n"
        "app = ServerApp()\nclient = ClientApp()\n\n\n@app.main()\ndef main(grid, context):\n"
        f"    Path({str(marker)!r}).write_text('the ServerApp ran on the SuperLink host')\n", encoding="utf-8")
    return folder


def _outsider_cli(federation: Any, address: str, args: list[str], home: Path) -> subprocess.CompletedProcess[str]:
    """``flwr <args>`` with a Flower config holding only ``address`` and the public ``ca.crt``."""
    localfed.write_flower_config(home, OUTSIDER, address, ca_cert=federation.certs.ca_cert)
    return subprocess.run(["flwr", *args], cwd=home, env=localfed.flower_env(home), timeout=120,
                          capture_output=True, text=True, stdin=subprocess.DEVNULL)


def _state(federation: Any) -> tuple[set[str], dict[str, str]]:
    """The operator's view (loopback): registered node ids, and the app (fab-id) of every run."""
    nodes = localfed.flwr_cli(federation, ["supernode", "ls", localfed.CONNECTION, "--format", "json"], timeout=60)
    runs = localfed.flwr_cli(federation, ["ls", localfed.CONNECTION, "--format", "json"], timeout=60)
    node_ids = {node["node-id"] for node in json.loads(nodes[nodes.index("{"):])["nodes"]}
    return node_ids, {run["run-id"]: run["fab-id"] for run in json.loads(runs[runs.index("{"):])["runs"]}


@needs_public_host
def test_outsider_with_ca_cert_can_neither_register_list_nor_run(federation: Any, tmp_path: Path) -> None:
    keys = pki.make_supernode_keys(tmp_path / "keys", OUTSIDER)
    marker = tmp_path / "pwned"
    app = _outsider_app(tmp_path / "intruder-app", marker)
    attempts = {
        "register": ["supernode", "register", str(keys.public_key), OUTSIDER, "--name", OUTSIDER],
        "ls": ["ls", OUTSIDER],
        "run": ["run", str(app), OUTSIDER],
    }
    nodes_before, runs_before = _state(federation)
    control_on_public = f"{PUBLIC_HOST}:{federation.superlink_port}"
    for address, expected in ((control_on_public, "Connection to the SuperLink is unavailable"),  # refused
                              (federation.fleet_address, "404 Not Found")):  # the gateway: Fleet API only
        for name, args in attempts.items():
            result = _outsider_cli(federation, address, args, tmp_path / f"cli-{name}-{address.replace(':', '-')}")
            output = result.stdout + result.stderr
            assert result.returncode != 0, f"flwr {name} against {address} succeeded:\n{output}"
            assert expected in output, f"flwr {name} against {address}:\n{output}"
    assert _state(federation) == (nodes_before, runs_before)  # nothing registered, no run created
    assert not any(OUTSIDER in fab for fab in runs_before.values())
    time.sleep(1)
    assert not marker.exists()

    # The same app and CLI config on the SuperLink host, against the loopback Control API, does run: the
    # attempts above failed because of where the Control API listens, not because the app is broken.
    result = _outsider_cli(federation, federation.control_address, attempts["run"], tmp_path / "cli-on-host")
    assert result.returncode == 0, result.stdout + result.stderr
    deadline = time.monotonic() + 60
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.3)
    assert marker.exists()


def _raw_request(address: str, ca_cert: Path, request_line: str) -> str:
    """Send one HTTP/1.1 request line verbatim (no client-side path normalisation) and return the reply."""
    host, _, port = address.rpartition(":")
    context = ssl.create_default_context(cafile=str(ca_cert))
    with socket.create_connection((host, int(port)), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname=host) as tls:
        tls.sendall(f"{request_line} HTTP/1.1\r\nHost: {address}\r\nContent-Length: 0\r\n"
                    "Connection: close\r\n\r\n".encode())
        chunks = []
        while chunk := tls.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")


@pytest.mark.parametrize("request_line", [
    "POST /v1/control/list-runs", "POST /v1/runtime/pull-task-input", "POST /v1/fleet/../control/list-runs",
    "POST /v1/fleet/%2e%2e/control/list-runs", "POST /v1/fleet//..//control/list-runs",
    "POST /v1/fleet/get-run/../../control/list-runs", "POST /v1/fleet/get-run?x=/../../control",
    "GET /docs", "GET /openapi.json", "GET /v1/fleet/get-run",
])
def test_fleet_gateway_forwards_nothing_but_the_fleet_api(federation: Any, request_line: str) -> None:
    reply = _raw_request(federation.fleet_address, federation.certs.ca_cert, request_line)
    assert reply.startswith("HTTP/1.1 404"), reply
    assert "serves only the Flower Fleet API" in reply
