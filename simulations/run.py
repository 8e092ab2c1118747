"""Hydra entry point for multi-client simulations: one ``flwr run`` of this checkout's app per Hydra job (what
flwr 1.42 recommends instead of the deprecated ``flwr.simulation.run_simulation``), against a simulation
SuperLink the job starts and stops itself, one results table per sweep.

The configuration is the composed condex config (``configs/condex.yaml`` + the FMNIST-CPU setting); every
field can be swept with Hydra's multirun syntax. The number of simulated SuperNodes is
``data.num_partitions``; each simulated ClientApp gets ``federation.sim_client_cpus`` CPUs and
``federation.sim_client_gpus`` of a GPU (Flower's ``client-resources-num-cpus`` / ``-num-gpus``). The whole
job config travels as the run config. Examples (each line is one sweep)::

    python -m simulations.run                                             # the default setting, once
    python -m simulations.run setting=cifar10_gpu                         # CIFAR-10, ResNet-34 -> ResNet-18, GPU
    python -m simulations.run -m data.num_partitions=5,10,20              # number of clients
    python -m simulations.run -m data.alpha=0.1,0.5,1.0                   # Dirichlet heterogeneity
    python -m simulations.run -m data.partition=pathological data.classes_per_partition=2,3
    python -m simulations.run -m condense.method=real,dm data.few_shot=10  # real few-shot vs condensed
    python -m simulations.run -m condense.ipc=1,10,50                     # images per class
    python -m simulations.run -m condense.method=dp-dm condense.epsilon=1,10  # privacy budget
    python -m simulations.run -m distill.base=fast,cmi distill.mode=mi+cs,mi*  # base, guided or not

Each job writes its run report (``report.json`` / ``report.md``) into its Hydra output directory and the
``flwr run --stream`` output into ``flower/flwr-run.log`` beside it (also echoed live); the sweep directory
(``multirun/<date>/<time>``, or the single run's directory) collects ``results.jsonl`` and the table
``results.md`` with one row per job. Runs from a checkout (the app is its ``pyproject.toml``)."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from shared.config import CONFIG_DIR, CondexConfig, flower_values, from_dict, register_schema, to_flat
from shared.errors import CondexError, ConfigError
from shared.io import atomic_write_text

PROJECT_ROOT = Path(__file__).resolve().parents[1]

RESULTS_JSONL = "results.jsonl"
RESULTS_MD = "results.md"
COLUMNS = ("job", "overrides", "status", "nodes", "accepted", "rejected", "epsilon_max", "teacher_accuracy",
           "student_accuracy", "federated_eval_mean", "seconds")


def simulate(cfg: CondexConfig, out_dir: Path, command: str = "python -m simulations.run",
             app_dir: Path | None = None, timeout: float | None = None) -> dict[str, Any]:
    """Run one federated job with ``flwr run <app> --stream`` on a fresh simulation SuperLink and return its
    report. ``app_dir`` (default: this checkout) is the Flower app; a failed run is a report, never a raise."""
    try:
        check_resources(cfg)
        localfed = _localfed()
    except CondexError as exc:
        return {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
    work = out_dir / "flower"
    work.mkdir(parents=True, exist_ok=True)
    run_config = flower_values(to_flat(cfg)) | {"output-dir": str(out_dir)}
    args = ["run", str(app_dir or PROJECT_ROOT), "simulation", "--stream", "--federation-config",
            federation_config(cfg), *localfed._run_config_args(run_config)]
    port = localfed.free_port()
    with _environment(CONDEX_COMMAND=command):  # the SuperLink hands its environment on to the ServerApp
        superlink = localfed.start_simulation_superlink(work, port)
    try:
        home = work / "flwr-cli"
        localfed.write_flower_config(home, "simulation", f"{localfed.HOST}:{port}")
        code = stream_flwr(args, localfed.flower_env(home), work / "flwr-run.log", timeout)
        if code != 0:
            print(f"[condex] flwr run exited with {code}; see {work / 'flwr-run.log'}", flush=True)
    finally:
        superlink.stop()
    reports = sorted(out_dir.glob("federated-*/report.json"))
    if not reports:
        return {"status": "failed", "error": f"the ServerApp wrote no report under {out_dir}; see {work}"}
    return json.loads(reports[-1].read_text())


def federation_config(cfg: CondexConfig) -> str:
    """Flower's ``--federation-config`` for the simulation: one SuperNode per partition and its resources."""
    fed = cfg.federation
    return (f"num-supernodes={cfg.data.num_partitions} client-resources-num-cpus={max(1, fed.sim_client_cpus)} "
            f"client-resources-num-gpus={fed.sim_client_gpus:g}")


def check_resources(cfg: CondexConfig) -> None:
    """A GPU share per site needs a GPU: Ray would otherwise wait for one forever."""
    if cfg.federation.sim_client_gpus > 0:
        import torch

        if not torch.cuda.is_available():
            raise ConfigError(f"federation.sim_client_gpus={cfg.federation.sim_client_gpus:g} but no CUDA GPU is "
                              "visible; set federation.sim_client_gpus=0 to simulate the sites on CPUs")


def stream_flwr(args: list[str], env: Mapping[str, str], log_path: Path, timeout: float | None) -> int:
    """``flwr <args>``: every output line echoed and kept in ``log_path``; its exit code (-9 on a timeout)."""
    with log_path.open("w", encoding="utf-8") as log, subprocess.Popen(
            ["flwr", *args], cwd=PROJECT_ROOT, env=dict(env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, text=True, errors="replace") as proc:
        timer = _Deadline(proc, timeout)
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            log.flush()
            sys.stdout.write(line)
        timer.cancel()
        return proc.wait()


class _Deadline:
    """Kill ``proc`` after ``timeout`` seconds (None: never)."""

    def __init__(self, proc: subprocess.Popen[str], timeout: float | None) -> None:
        import threading

        self._timer = threading.Timer(timeout, proc.kill) if timeout else None
        if self._timer is not None:
            self._timer.daemon = True
            self._timer.start()

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()


@contextlib.contextmanager
def _environment(**values: str) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


def _localfed() -> ModuleType:
    """``scripts/deploy/localfed.py`` (simulation SuperLink, Flower CLI config), loaded from the checkout."""
    if "localfed" in sys.modules:
        return sys.modules["localfed"]
    path = PROJECT_ROOT / "scripts" / "deploy" / "localfed.py"
    if not path.is_file():
        raise ConfigError(f"{path} not found: simulations.run drives `flwr run` on a checkout of condex (its "
                          "pyproject.toml is the Flower app); run it from a clone, not from an installed wheel")
    spec = importlib.util.spec_from_file_location("localfed", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["localfed"] = module
    spec.loader.exec_module(module)
    return module


def result_row(job: str, overrides: list[str], report: dict[str, Any]) -> dict[str, Any]:
    """One line of the sweep table, from a run report."""
    eps = [p["epsilon"] for p in report.get("per_node", []) if p.get("epsilon") is not None]
    return {
        "job": job, "overrides": list(overrides), "status": report.get("status"),
        "nodes": report.get("nodes"), "accepted": report.get("payloads_accepted"),
        "rejected": len(report.get("rejections", [])), "epsilon_max": max(eps) if eps else None,
        "teacher_accuracy": report.get("teacher_accuracy"), "student_accuracy": report.get("student_accuracy"),
        "federated_eval_mean": report.get("federated_eval_mean"), "seconds": report.get("seconds"),
        "error": report.get("error", ""),
    }


def append_result(sweep_dir: Path, row: dict[str, Any]) -> Path:
    """Add ``row`` to the sweep's JSONL and re-render its Markdown table (jobs run one after another)."""
    sweep_dir.mkdir(parents=True, exist_ok=True)
    path = sweep_dir / RESULTS_JSONL
    torn = path.is_file() and path.stat().st_size > 0 and not path.read_bytes().endswith(b"\n")
    with path.open("a", encoding="utf-8") as handle:
        handle.write(("\n" if torn else "") + json.dumps(row) + "\n")  # never glue a row onto a torn one
    return atomic_write_text(sweep_dir / RESULTS_MD, render_table(read_rows(sweep_dir / RESULTS_JSONL)))


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The sweep's rows; a line cut by a killed job (or edited by hand) is skipped, not fatal to the sweep."""
    rows = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def render_table(rows: list[dict[str, Any]]) -> str:
    """Markdown table; the overrides column shows what differs between jobs (the swept values), and the
    overrides shared by every job are listed once above the table."""
    sets = [set(row.get("overrides") or []) for row in rows]
    common = set.intersection(*sets) if len(sets) > 1 else set()
    lines = [f"Common overrides: {' '.join(sorted(common)) or '(none)'}", ""] if common else []
    lines += ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        shown = dict(row, overrides=" ".join(o for o in row.get("overrides") or [] if o not in common) or "(defaults)")
        lines.append("| " + " | ".join(_cell(shown.get(c)) for c in COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "/")


register_schema()  # configs/condex.yaml composes onto the dataclass schema, as load_config does


@hydra.main(config_path=str(CONFIG_DIR), config_name="condex", version_base=None)
def main(composed: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    values = OmegaConf.to_container(composed, resolve=True)
    assert isinstance(values, dict)
    if not isinstance(values.get("setting"), str):
        values.pop("setting", None)
    hc = HydraConfig.get()
    job_dir = Path(hc.runtime.output_dir)
    multirun = hc.mode is not None and hc.mode.name == "MULTIRUN"
    sweep_dir = Path(hc.sweep.dir) if multirun else job_dir
    try:  # one job with a bad value (data.alpha=nan) is a failed row, never the end of the sweep
        cfg = from_dict(values).validate()
    except CondexError as exc:
        report: dict[str, Any] = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
        print(f"[condex] job {hc.job.get('num', 0)}: bad configuration: {report['error']}", flush=True)
    else:
        report = simulate(cfg, job_dir, " ".join(["python -m simulations.run", *hc.overrides.task]))
    row = result_row(str(hc.job.get("num", 0)), list(hc.overrides.task), report)
    table = append_result(sweep_dir, row)
    error = f" ({row['error']})" if row.get("error") else ""
    print(f"[condex] job {row['job']}: {row['status']}{error}; results table {table}", flush=True)


if __name__ == "__main__":
    main()
