"""Hydra entry point for multi-client simulations: the same ServerApp and ClientApp as ``flwr run``, run
in-process with Flower's simulation runtime, one simulation per Hydra job, one results table per sweep.

The configuration is the composed condex config (``configs/condex.yaml`` + the FMNIST-CPU setting); every
field can be swept with Hydra's multirun syntax. The number of simulated SuperNodes is
``data.num_partitions``. Examples (each line is one sweep)::

    python -m simulations.run                                             # the default setting, once
    python -m simulations.run -m data.num_partitions=5,10,20              # number of clients
    python -m simulations.run -m data.alpha=0.1,0.5,1.0                   # Dirichlet heterogeneity
    python -m simulations.run -m data.partition=pathological data.classes_per_partition=2,3
    python -m simulations.run -m condense.method=real,dm data.few_shot=10  # real few-shot vs condensed
    python -m simulations.run -m condense.ipc=1,10,50                     # images per class
    python -m simulations.run -m condense.method=dp-dm condense.epsilon=1,10  # privacy budget
    python -m simulations.run -m distill.base=fast,cmi distill.mode=mi+cs,mi*  # base, guided or not

Each job writes its run report (``report.json`` / ``report.md``) into its Hydra output directory; the sweep
directory (``multirun/<date>/<time>``, or the single run's directory) collects ``results.jsonl`` and the
table ``results.md`` with one row per job."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from shared.config import CONFIG_DIR, CondexConfig, from_dict, register_schema, to_flat
from shared.errors import CondexError
from shared.io import atomic_write_text

RESULTS_JSONL = "results.jsonl"
RESULTS_MD = "results.md"
COLUMNS = ("job", "overrides", "status", "nodes", "accepted", "rejected", "epsilon_max", "teacher_accuracy",
           "student_accuracy", "federated_eval_mean", "seconds")


def simulate(cfg: CondexConfig, out_dir: Path, command: str = "python -m simulations.run") -> dict[str, Any]:
    """Run one federated job in Flower's simulation runtime (Ray) and return its report."""
    from flwr.simulation import run_simulation

    from client.app import build_app as build_client
    from server.flower.app import build_app as build_server

    overrides = {k: v for k, v in to_flat(cfg).items() if v is not None and not isinstance(v, list)}
    overrides["output-dir"] = str(out_dir)
    os.environ["CONDEX_COMMAND"] = command
    cpus = max(1, cfg.federation.sim_client_cpus)
    try:
        run_simulation(
            server_app=build_server(overrides), client_app=build_client(overrides),
            num_supernodes=cfg.data.num_partitions,
            backend_config={"client_resources": {"num_cpus": cpus, "num_gpus": 0.0},
                            "init_args": {"num_cpus": os.cpu_count() or 1}},
        )
    except Exception as exc:  # a failed job is a row of the table (its report says why), not a dead sweep
        print(f"[condex] simulation raised {type(exc).__name__}: {exc}", flush=True)
    reports = sorted(out_dir.glob("federated-*/report.json"))
    if not reports:
        return {"status": "failed", "error": f"the ServerApp wrote no report under {out_dir}"}
    return json.loads(reports[-1].read_text())


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
    print(f"[condex] job {row['job']}: {row['status']}; results table {table}", flush=True)


if __name__ == "__main__":
    main()
