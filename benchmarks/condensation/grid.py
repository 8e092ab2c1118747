"""The benchmark grid: which condensation runs to make and how each is evaluated.

Cases run in priority order (IPC 10 first, the issue's targets), and every finished case is written to the
results at once, so an interrupted run keeps what it measured and ``--resume`` continues from there.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from benchmarks.condensation.evaluate import EvalConfig, epochs_for, evaluate_payload
from client.condense import condense
from shared.config.condense import CondenseConfig
from shared.data import LabeledImages, partition_indices
from shared.payload import CondensedPayload, PayloadMeta, PayloadSpec, validate_payload


@dataclass(frozen=True)
class Case:
    method: str
    setting: str  # centralized | federated
    ipc: int
    epsilon: float | None = None

    @property
    def key(self) -> str:
        eps = "" if self.epsilon is None else f"-eps{self.epsilon:g}"
        return f"{self.setting}-{self.method}-ipc{self.ipc}{eps}"


def default_grid() -> list[Case]:
    """FMNIST: IPC 1/10/50 x {real, dm, dp-dm eps 10 and 1, gm}, plus federated DM and dp-dos eps 10 at IPC 10;
    IPC 10 first."""
    cases: list[Case] = []
    for ipc in (10, 1, 50):
        cases += [Case("real", "centralized", ipc), Case("dm", "centralized", ipc)]
        if ipc == 10:
            cases.append(Case("dm", "federated", 10))
        cases += [Case("dp-dm", "centralized", ipc, 10.0), Case("dp-dm", "centralized", ipc, 1.0),
                  Case("gm", "centralized", ipc)]
        if ipc == 10:
            cases.append(Case("dp-dos", "centralized", 10, 10.0))
    return cases


@dataclass
class BenchSettings:
    """Condensation settings per method (from the FMNIST-CPU config) and the evaluation protocol."""

    base: CondenseConfig
    per_method: dict[str, dict[str, Any]]
    evaluation: EvalConfig
    num_clients: int = 10
    alpha: float = 0.5
    seed: int = 0

    def condense_config(self, case: Case, seed: int | None = None) -> CondenseConfig:
        values = {**dataclasses.asdict(self.base), **self.per_method.get(case.method, {})}
        values.update(method=case.method, ipc=case.ipc, epsilon=case.epsilon or 0.0, noise_multiplier=0.0,
                      seed=self.seed if seed is None else seed)
        if case.setting == "federated":
            values.update(self.per_method.get("federated", {}))
        cfg = CondenseConfig(**values)
        cfg.validate()
        return cfg


def reevaluate(record: dict[str, Any], settings: BenchSettings, test_x: torch.Tensor, test_y: torch.Tensor,
               work_dir: Path) -> dict[str, Any]:
    """Re-test a finished case on its saved payload with the current evaluation protocol (condensation kept)."""
    case = Case(record["method"], record["setting"], record["ipc"], record["epsilon"])
    payload = CondensedPayload.load(work_dir / f"{case.key}.safetensors")
    accuracies = evaluate_payload(payload, test_x, test_y, settings.evaluation, seed=settings.seed)
    return {**record, **_accuracy_fields(accuracies), "eval_epochs": epochs_for(len(payload), settings.evaluation)}


def _accuracy_fields(accuracies: list[float]) -> dict[str, Any]:
    return {"accuracy_mean": statistics.fmean(accuracies),
            "accuracy_std": statistics.pstdev(accuracies) if len(accuracies) > 1 else 0.0,
            "accuracies": accuracies}


def run_case(case: Case, settings: BenchSettings, train: LabeledImages, test_x: torch.Tensor, test_y: torch.Tensor,
             work_dir: Path, progress: bool) -> dict[str, Any]:
    """Condense (centralised or per client), check the payload(s), evaluate, return the record."""
    if case.setting == "federated":
        payload, seconds, details = _federated(case, settings, train, progress)
    else:
        start = time.perf_counter()
        payload = condense(train, settings.condense_config(case), progress=progress)
        seconds = time.perf_counter() - start
        details = {"iterations": payload.meta.iterations}
        _check(payload, case.ipc)
    payload.save(work_dir / f"{case.key}.safetensors")
    accuracies = evaluate_payload(payload, test_x, test_y, settings.evaluation, seed=settings.seed)
    record = {
        "method": case.method, "setting": case.setting, "ipc": case.ipc, "epsilon": case.epsilon,
        **_accuracy_fields(accuracies), "seconds_per_client": round(seconds, 1), "num_images": len(payload),
        "eval_epochs": epochs_for(len(payload), settings.evaluation), **details,
    }
    if payload.meta.epsilon is not None:
        record.update(epsilon_reported=payload.meta.epsilon, delta=payload.meta.delta,
                      noise_multiplier=payload.meta.noise_multiplier, sample_rate=payload.meta.sample_rate,
                      dp_steps=payload.meta.dp_steps)
    return record


def _federated(case: Case, settings: BenchSettings, train: LabeledImages,
               progress: bool) -> tuple[CondensedPayload, float, dict[str, Any]]:
    """Each of ``num_clients`` Dirichlet partitions condenses its own classes; the server takes the union."""
    parts = partition_indices(train.labels.numpy(), settings.num_clients, scheme="dirichlet", alpha=settings.alpha,
                              seed=settings.seed)
    payloads, seconds = [], []
    for client, index in enumerate(parts):
        start = time.perf_counter()
        payload = condense(train.subset(index), settings.condense_config(case, seed=settings.seed + client),
                           progress=progress)
        seconds.append(time.perf_counter() - start)
        _check(payload, case.ipc)
        payloads.append(payload)
    union = union_payload(payloads)
    details = {"client_seconds": [round(s, 1) for s in seconds],
               "client_iterations": [p.meta.iterations for p in payloads],
               "client_images": [len(p) for p in payloads], "num_clients": len(parts), "alpha": settings.alpha}
    return union, max(seconds), details


def union_payload(payloads: list[CondensedPayload]) -> CondensedPayload:
    """The server's view of several sites: all images together (per-class cap = sites x ipc)."""
    first = payloads[0].meta
    counts = [sum(p.meta.local_class_counts[c] for p in payloads) for c in range(first.num_classes)]
    meta = PayloadMeta(**{**dataclasses.asdict(first), "ipc": first.ipc * len(payloads), "local_class_counts": counts,
                          "wall_time_s": max(p.meta.wall_time_s for p in payloads)})
    return CondensedPayload(torch.cat([p.images for p in payloads]), torch.cat([p.labels for p in payloads]), meta)


def _check(payload: CondensedPayload, ipc: int) -> None:
    """What the server would do on receipt: the strict validator, after a wire round trip."""
    wire = CondensedPayload.from_arrays(payload.to_arrays(), payload.wire_meta())
    meta = payload.meta
    validate_payload(wire, PayloadSpec(num_classes=meta.num_classes, image_shape=meta.image_shape, max_ipc=ipc))
