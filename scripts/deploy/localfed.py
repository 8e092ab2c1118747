"""Run condex as a real deployment: a SuperLink with TLS and SuperNode authentication, SuperNodes that each
point at a local data folder, and the app submitted with ``flwr run``. Every process is a separate
``flower-*`` executable, exactly as at real data sites; here they all live on loopback addresses.

Used by ``tests/test_deploy.py`` and runnable as a demo::

    python scripts/deploy/localfed.py --workdir /tmp/condex-deploy --sites site-a=/data/a site-b=/data/b \\
        --run-config "condense.method=dp-dm condense.epsilon=8 condense.ipc=5"

Only the Fleet API is public. flwr 1.42's SuperLink serves the Fleet, Control (``flwr run``, ``flwr ls``,
``flwr supernode register``) and Runtime (ServerAppIo) APIs on one HTTPS port (``--host``/``--port``) and the
open-source build has no user authentication for the Control API, so anyone who can reach that port can
register a key and run code on the SuperLink host. Hence the SuperLink listens on 127.0.0.1 only, and a small
Fleet gateway (``python scripts/deploy/localfed.py fleet-gateway ...``, see ``fleet_gateway_main``) listens on
the public address (``--public-host``) and forwards nothing but ``/v1/fleet/*`` (and ``/health``) to it.

Each step is a small function so the README's manual commands and this script stay the same commands:
``start_superlink`` -> ``start_fleet_gateway`` -> ``write_connection`` -> ``register_supernode`` ->
``start_supernode`` -> ``run_app``. Flower's state (``FLWR_HOME``) lives under the work directory: one for the
SuperLink, one per SuperNode, one for the ``flwr`` CLI; nothing is written to ``~/.flwr``."""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import ExitStack, asynccontextmanager, closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pki import SuperLinkCerts, SuperNodeKeys, generate

PROJECT_ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"  # the SuperLink (Control, Runtime and Fleet APIs on one port) never listens elsewhere
CONNECTION = "condex-deploy"
FLEET_PATH = re.compile(r"/v1/fleet/[a-z][a-z-]*")  # flwr 1.42: superlink/routers/fleet/router.py
GATEWAY_MAX_BODY = 512 * 1024 * 1024


@dataclass
class Proc:
    """A started Flower process (own process group, so its helpers stop with it) and its log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def alive(self) -> bool:
        return self.popen.poll() is None

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM the process group (the process and the SuperExec / app processes it spawned), then SIGKILL."""
        if self.popen.poll() is not None:
            return
        pgid = os.getpgid(self.popen.pid)
        os.killpg(pgid, signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(pgid, signal.SIGKILL)
            self.popen.wait(5)
        try:  # helpers that outlived their parent
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@dataclass
class Federation:
    """Paths and processes of one local deployment."""

    workdir: Path
    certs: SuperLinkCerts
    superlink_port: int
    fleet_port: int
    public_host: str = HOST
    processes: list[Proc] = field(default_factory=list)

    @property
    def control_address(self) -> str:
        """The SuperLink itself (Control + Runtime API; ``flwr`` CLI): loopback only."""
        return f"{HOST}:{self.superlink_port}"

    @property
    def fleet_address(self) -> str:
        """The Fleet gateway on the public interface: what SuperNodes connect to."""
        return f"{self.public_host}:{self.fleet_port}"

    @property
    def cli_home(self) -> Path:
        return self.workdir / "flwr-cli"

    def stop(self) -> None:
        for proc in reversed(self.processes):
            proc.stop()


def free_port(host: str = HOST) -> int:
    """A TCP port on ``host`` that is free right now."""
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def flower_env(flwr_home: Path) -> dict[str, str]:
    """Environment of every Flower process: its own FLWR_HOME, this venv's executables first on PATH (the
    SuperLink/SuperNode spawn ``flower-superexec`` by name), no update check or telemetry (no network)."""
    env = dict(os.environ)
    bin_dir = str(Path(sys.executable).parent)
    env.update({"FLWR_HOME": str(flwr_home), "PATH": f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
                "FLWR_DISABLE_UPDATE_CHECK": "1", "FLWR_TELEMETRY_ENABLED": "0", "PYTHONUNBUFFERED": "1"})
    return env


def _spawn(name: str, args: Sequence[str], workdir: Path, flwr_home: Path) -> Proc:
    flwr_home.mkdir(parents=True, exist_ok=True)
    log = workdir / f"{name}.log"
    handle = log.open("wb")
    popen = subprocess.Popen(list(args), cwd=workdir, env=flower_env(flwr_home), stdout=handle,
                             stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    handle.close()
    return Proc(name, popen, log)


def wait_for_log(proc: Proc, pattern: str, timeout: float) -> re.Match[str]:
    """Block until ``pattern`` appears in the process log; fail early if the process exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        match = re.search(pattern, proc.output())
        if match:
            return match
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode} before {pattern!r}:\n{proc.output()}")
        time.sleep(0.3)
    raise TimeoutError(f"{proc.name}: no {pattern!r} within {timeout:.0f}s:\n{proc.output()[-3000:]}")


def start_superlink(workdir: Path, certs: SuperLinkCerts, port: int) -> Proc:
    """``flower-superlink`` with TLS (our CA-signed certificate) and SuperNode authentication: only
    SuperNodes whose public key was registered with ``flwr supernode register`` may connect.

    It listens on 127.0.0.1 only: in flwr 1.42 ``--host``/``--port`` carry the Fleet, Control and Runtime
    (ServerAppIo) HTTP APIs together, and ``--control-api-address`` / ``--fleet-api-address`` only place the
    deprecated gRPC servers (started only under internal ``FLWR_INTERNAL_GRPC_*`` variables; SuperNodes no
    longer speak gRPC). SuperNodes reach the Fleet API through ``start_fleet_gateway``."""
    args = [
        "flower-superlink", "--ssl-ca-certfile", str(certs.ca_cert), "--ssl-certfile", str(certs.server_cert),
        "--ssl-keyfile", str(certs.server_key), "--enable-supernode-auth", "--host", HOST, "--port", str(port),
        "--database", str(workdir / "superlink-state.db"), "--disable-runtime-dependency-installation",
    ]
    proc = _spawn("superlink", args, workdir, workdir / "flwr-superlink")
    wait_for_log(proc, r"Uvicorn running on https://", timeout=60)
    return proc


def start_fleet_gateway(workdir: Path, certs: SuperLinkCerts, host: str, port: int, superlink_port: int) -> Proc:
    """The public face of the SuperLink: HTTPS on ``host:port`` (the SuperLink's certificate), forwarding only
    Fleet API requests to the SuperLink on 127.0.0.1 (see ``fleet_gateway_main``)."""
    args = [sys.executable, str(Path(__file__).resolve()), "fleet-gateway", "--listen", f"{host}:{port}",
            "--upstream", f"https://{HOST}:{superlink_port}", "--ca-cert", str(certs.ca_cert),
            "--certfile", str(certs.server_cert), "--keyfile", str(certs.server_key)]
    proc = _spawn("fleet-gateway", args, workdir, workdir / "flwr-fleet-gateway")
    wait_for_log(proc, r"Uvicorn running on https://", timeout=60)
    return proc


def write_connection(fed: Federation) -> Path:
    """The ``flwr`` CLI's Flower configuration: one SuperLink connection over TLS, trusting our CA."""
    return write_flower_config(fed.cli_home, CONNECTION, fed.control_address, ca_cert=fed.certs.ca_cert)


def write_flower_config(flwr_home: Path, name: str, address: str, ca_cert: Path | None = None) -> Path:
    """``$FLWR_HOME/config.toml`` with one SuperLink connection (TLS with ``ca_cert``, else insecure)."""
    flwr_home.mkdir(parents=True, exist_ok=True)
    security = f'root-certificates = "{ca_cert}"\n' if ca_cert else "insecure = true\n"
    path = flwr_home / "config.toml"
    path.write_text(f'[superlink]\ndefault = "{name}"\n\n[superlink.{name}]\naddress = "{address}"\n{security}',
                    encoding="utf-8")
    return path


def flwr_cli(fed: Federation, args: Sequence[str], timeout: float, cwd: Path | None = None) -> str:
    """Run a ``flwr`` CLI command against the federation; raise with its output when it fails."""
    return run_flwr(fed.cli_home, args, timeout, cwd or fed.workdir)


def run_flwr(flwr_home: Path, args: Sequence[str], timeout: float, cwd: Path) -> str:
    result = subprocess.run(["flwr", *args], cwd=cwd, env=flower_env(flwr_home), timeout=timeout,
                            capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        raise RuntimeError(f"flwr {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result.stdout


def register_supernode(fed: Federation, keys: SuperNodeKeys) -> int:
    """Register a data site's public key with the SuperLink (``flwr supernode register``); returns its node id."""
    out = flwr_cli(fed, ["supernode", "register", str(keys.public_key), CONNECTION, "--name", keys.name,
                         "--format", "json"], timeout=60)
    return int(json.loads(out[out.index("{"):])["node-id"])


def start_supernode(fed: Federation, keys: SuperNodeKeys, node_config: Mapping[str, str], port: int,
                    max_wait_s: float = 60.0) -> Proc:
    """``flower-supernode`` over TLS to the public Fleet gateway, authenticated with the site's private key,
    told where its data is; its own Runtime API stays on 127.0.0.1."""
    config = " ".join(f'{k}="{v}"' for k, v in node_config.items())
    args = [
        "flower-supernode", "--superlink", fed.fleet_address, "--root-certificates", str(fed.certs.ca_cert),
        "--auth-supernode-private-key", str(keys.private_key), "--node-config", config, "--host", HOST,
        "--port", str(port), "--max-wait-time", str(max_wait_s),
    ]
    return _spawn(f"supernode-{keys.name}", args, fed.workdir, fed.workdir / f"flwr-supernode-{keys.name}")


def run_app(fed: Federation, run_config: Mapping[str, object], timeout: float, app_dir: Path | None = None) -> str:
    """Submit the condex app (``flwr run``) to the federation and stream its logs until the run ends."""
    app_dir = app_dir or PROJECT_ROOT
    return run_flwr(fed.cli_home, ["run", str(app_dir), CONNECTION, "--stream", *_run_config_args(run_config)],
                    timeout, app_dir)


def _run_config_args(run_config: Mapping[str, object]) -> list[str]:
    overrides = " ".join(f"{k}={_toml(v)}" for k, v in run_config.items())
    return ["--run-config", overrides] if overrides else []


def start_simulation_superlink(workdir: Path, port: int) -> Proc:
    """A SuperLink in simulation mode (what ``flwr run`` starts for the ``local`` connection), on our port."""
    args = ["flower-superlink", "--insecure", "--simulation", "--host", HOST, "--port", str(port),
            "--database", str(workdir / "simulation-state.db"), "--disable-runtime-dependency-installation"]
    proc = _spawn("superlink-simulation", args, workdir, workdir / "flwr-superlink-simulation")
    wait_for_log(proc, r"Uvicorn running on http://", timeout=60)
    return proc


def run_simulation_app(workdir: Path, port: int, num_supernodes: int, run_config: Mapping[str, object],
                       timeout: float, app_dir: Path | None = None) -> str:
    """``flwr run <app> --federation-config num-supernodes=N`` against a simulation SuperLink."""
    app_dir = app_dir or PROJECT_ROOT
    home = workdir / "flwr-cli-simulation"
    write_flower_config(home, "simulation", f"{HOST}:{port}")
    args = ["run", str(app_dir), "simulation", "--stream", "--federation-config", f"num-supernodes={num_supernodes}",
            *_run_config_args(run_config)]
    return run_flwr(home, args, timeout, app_dir)


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))


def start_federation(stack: ExitStack, workdir: Path, sites: Mapping[str, Mapping[str, str]],
                     public_host: str = HOST) -> Federation:
    """Keys, SuperLink (127.0.0.1), Fleet gateway (``public_host``), connection, registered + started
    SuperNodes; everything stops when ``stack`` closes."""
    workdir.mkdir(parents=True, exist_ok=True)
    hosts = list(dict.fromkeys([public_host, HOST, "localhost"]))
    certs, node_keys = generate(workdir / "keys", hosts, list(sites))
    fed = Federation(workdir, certs, free_port(), free_port(public_host), public_host)
    stack.callback(fed.stop)
    fed.processes.append(start_superlink(workdir, certs, fed.superlink_port))
    fed.processes.append(start_fleet_gateway(workdir, certs, public_host, fed.fleet_port, fed.superlink_port))
    write_connection(fed)
    for keys in node_keys:
        register_supernode(fed, keys)
        proc = start_supernode(fed, keys, sites[keys.name], free_port())
        fed.processes.append(proc)
        wait_for_log(proc, r"SuperNode ID: \d+", timeout=90)
    return fed


def fleet_gateway_app(upstream: str, ca_cert: Path, max_body: int = GATEWAY_MAX_BODY) -> Any:
    """ASGI app that forwards ``POST /v1/fleet/<method>`` and ``GET /health`` to ``upstream`` (verified
    against ``ca_cert``) and answers everything else, above all the Control API (``/v1/control/*``) and the
    Runtime API (``/v1/runtime/*``), with 404 without contacting the SuperLink. The path is matched on the raw
    request target (no dot segments, percent-escapes or query string get through), so the upstream URL is
    exactly ``upstream + path``."""
    import httpx
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse, Response
    from starlette.routing import Route

    drop = {"host", "connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade",
            "content-length", "accept-encoding", "forwarded", "x-forwarded-for", "x-forwarded-host",
            "x-forwarded-proto", "x-real-ip"}
    client = httpx.AsyncClient(base_url=upstream, verify=ssl.create_default_context(cafile=str(ca_cert)),
                               timeout=httpx.Timeout(300.0, connect=10.0))

    async def forward(request: Request) -> Response:
        raw_path = request.scope.get("raw_path") or request.scope["path"].encode()
        target = raw_path.decode("latin-1")
        allowed = (request.method == "POST" and FLEET_PATH.fullmatch(target)) or (
            request.method == "GET" and target == "/health")
        if not allowed or request.scope.get("query_string"):
            return PlainTextResponse("Not found: this port serves only the Flower Fleet API\n", status_code=404)
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > max_body:
                return PlainTextResponse("Request body too large\n", status_code=413)
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in drop]
        if request.client:
            headers.append(("x-forwarded-for", request.client.host))
        headers.append(("accept-encoding", "identity"))
        try:
            reply = await client.request(request.method, target, content=bytes(body), headers=headers)
        except httpx.HTTPError as err:
            return PlainTextResponse(f"SuperLink unavailable: {type(err).__name__}\n", status_code=502)
        out = {k: v for k, v in reply.headers.items() if k.lower() not in drop | {"content-encoding"}}
        return Response(reply.content, status_code=reply.status_code, headers=out)

    async def lifespan(_app: Any) -> AsyncIterator[None]:
        yield
        await client.aclose()

    methods = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
    return Starlette(routes=[Route("/{path:path}", forward, methods=methods)],
                     lifespan=asynccontextmanager(lifespan))


def fleet_gateway_main(argv: Sequence[str]) -> int:
    """``localfed.py fleet-gateway``: serve ``fleet_gateway_app`` over HTTPS on ``--listen``."""
    import uvicorn

    parser = argparse.ArgumentParser(prog="localfed.py fleet-gateway",
                                     description="Expose only the SuperLink's Fleet API on a public address.")
    parser.add_argument("--listen", required=True, metavar="HOST:PORT", help="public address, e.g. 0.0.0.0:9092")
    parser.add_argument("--upstream", default=f"https://{HOST}:9093", help="the SuperLink on loopback")
    parser.add_argument("--ca-cert", type=Path, required=True, help="CA that signed the SuperLink certificate")
    parser.add_argument("--certfile", type=Path, required=True, help="TLS certificate served to SuperNodes")
    parser.add_argument("--keyfile", type=Path, required=True)
    args = parser.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    uvicorn.run(fleet_gateway_app(args.upstream, args.ca_cert), host=host.strip("[]"), port=int(port),
                ssl_certfile=str(args.certfile), ssl_keyfile=str(args.keyfile), proxy_headers=False,
                server_header=False, date_header=False, log_level="info", access_log=False)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["fleet-gateway"]:
        return fleet_gateway_main(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog="`localfed.py fleet-gateway --help`: the Fleet-only gateway alone.")
    parser.add_argument("--workdir", type=Path, required=True, help="keys, Flower state and logs go here")
    parser.add_argument("--sites", nargs="+", required=True, metavar="NAME=DIR",
                        help="data sites: name and data folder (train.npz or train/<class>/...)")
    parser.add_argument("--dataset", default="folder", help="dataset loader the sites use (node config 'dataset')")
    parser.add_argument("--run-config", default="", help="flwr run --run-config overrides, e.g. 'condense.ipc=5'")
    parser.add_argument("--timeout", type=float, default=3600.0)
    parser.add_argument("--public-host", default=HOST,
                        help="address the SuperNodes connect to (the Fleet gateway only; the SuperLink's Control and "
                             "Runtime APIs stay on 127.0.0.1 whatever this is)")
    args = parser.parse_args(argv)
    sites = {}
    for spec in args.sites:
        name, _, folder = spec.partition("=")
        sites[name] = {"data-dir": str(Path(folder).resolve()), "dataset": args.dataset}
    overrides = dict(item.split("=", 1) for item in args.run_config.split()) if args.run_config else {}
    if "condense.method" not in overrides:  # the job's default, dm, is not DP: deployed sites refuse it
        print("note: no condense.method in --run-config; the job's default (dm) is refused by every site whose "
              "policy requires DP (the deployed default): pass e.g. 'condense.method=dp-dm condense.epsilon=8'",
              file=sys.stderr)
    with ExitStack() as stack:
        fed = start_federation(stack, args.workdir.resolve(), sites, public_host=args.public_host)
        print(f"SuperLink on {fed.control_address} (Control + Runtime API, loopback only; TLS, SuperNode "
              f"authentication); Fleet API on {fed.fleet_address}; {len(sites)} SuperNode(s) connected")
        print(run_app(fed, overrides, timeout=args.timeout))
    return 0


if __name__ == "__main__":
    sys.exit(main())
