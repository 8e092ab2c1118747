"""The run report of one federated job: what every node sent (or why it was refused), teacher and student
accuracy, federated evaluation and timings. Written as JSON (machine-readable, the schema of
``benchmarks/results/default-job.json``) and as a Markdown table (printed at the end of the run).

``write_site_plots`` adds what the server received per site: ``sites/labels.png``, the label distribution of
every accepted payload (flwr-datasets' ``plot_label_distributions`` over a ``Partitioner`` whose partitions are
the payloads), and ``sites/node-<id>.png``, each payload as a grid (one row per class). The report lists
them, and the distillation's own plots (``distill/plots/run.png``, ``tsne.png``), under ``plots``."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared.io import atomic_path, atomic_write_text, json_safe

if TYPE_CHECKING:
    from shared.payload import CondensedPayload

ACCEPTED, REJECTED, FAILED, TIMEOUT = "accepted", "rejected", "failed", "timeout"
REFUSED = "refused"  # the site's privacy policy refused the request (error code 104); reason names the policy key


@dataclass
class NodeOutcome:
    """One node's answer to the condense query. ``status``: accepted | rejected (payload failed validation) |
    refused (the site's privacy policy refused the request; ``reason`` names the policy key and value) |
    failed (the node replied with another error) | timeout (no reply within federation.reply_timeout_s)."""

    node_id: int
    status: str
    reason: str = ""
    source: str = ""
    method: str = ""
    num_samples: int = 0
    ipc: int = 0
    epsilon: float | None = None
    delta: float | None = None
    condense_seconds: float | None = None
    condense_finished: float | None = None  # the site's Unix time when its payload was ready
    payload_bytes: int = 0
    local_train: int | None = None
    local_test: int | None = None
    eval_accuracy: float | None = None
    eval_examples: int | None = None
    eval_error: str = ""
    audit: dict[str, float] = field(default_factory=dict)  # the site's audit-* figures (its policy audits)


@dataclass
class RunReport:
    """Everything the job measured; ``to_json`` keeps the required keys at the top level."""

    command: str
    config: dict[str, Any]
    date: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    status: str = "running"  # running | completed | failed
    error: str = ""
    nodes_connected: int = 0
    node_outcomes: list[NodeOutcome] = field(default_factory=list)
    teacher: dict[str, Any] = field(default_factory=dict)  # arch, checkpoint, accuracy
    student: dict[str, Any] = field(default_factory=dict)  # arch, accuracy, path, exports
    timings: dict[str, float] = field(default_factory=dict)
    engine: dict[str, Any] = field(default_factory=dict)  # what the distillation engine reported
    screening: dict[str, Any] = field(default_factory=dict)  # server.screening: per-node kept/dropped and why
    plots: dict[str, str] = field(default_factory=dict)  # name -> PNG path (site label distributions, grids, run)

    # ---- summaries -------------------------------------------------------------------------------------
    @property
    def nodes(self) -> int:
        return len(self.node_outcomes)

    @property
    def nodes_answered(self) -> int:
        return sum(o.status in (ACCEPTED, REJECTED) for o in self.node_outcomes)

    @property
    def accepted(self) -> list[NodeOutcome]:
        return [o for o in self.node_outcomes if o.status == ACCEPTED]

    @property
    def rejections(self) -> list[dict[str, Any]]:
        return [{"node_id": o.node_id, "status": o.status, "reason": o.reason}
                for o in self.node_outcomes if o.status != ACCEPTED]

    def federated_eval(self) -> dict[str, Any]:
        """Mean of the per-node accuracies and the example-weighted mean (None when no node evaluated)."""
        # only fractions enter the means: a NaN, 7.0 or -3 from a node is never averaged (judge_eval_reply
        # already refuses them; this keeps a report built by other code honest too)
        done = [o for o in self.node_outcomes if _fraction(o.eval_accuracy)]
        if not done:
            return {"mean": None, "weighted_mean": None, "nodes": 0}
        total = sum(o.eval_examples or 0 for o in done)
        weighted = sum((o.eval_accuracy or 0.0) * (o.eval_examples or 0) for o in done) / total if total else None
        return {"mean": sum(o.eval_accuracy or 0.0 for o in done) / len(done), "weighted_mean": weighted,
                "nodes": len(done)}

    def to_dict(self) -> dict[str, Any]:
        fed = self.federated_eval()
        return {
            "date": self.date,
            "command": self.command,
            "status": self.status,
            "error": self.error,
            "nodes": self.nodes,
            "nodes_connected": self.nodes_connected,
            "nodes_answered": self.nodes_answered,
            "payloads_accepted": len(self.accepted),
            "payloads_rejected": sum(o.status == REJECTED for o in self.node_outcomes),
            "requests_refused": sum(o.status == REFUSED for o in self.node_outcomes),
            "rejections": self.rejections,
            "teacher_accuracy": self.teacher.get("accuracy"),
            "student_accuracy": self.student.get("accuracy"),
            "federated_eval_mean": fed["mean"],
            "federated_eval_weighted_mean": fed["weighted_mean"],
            "seconds": self.timings.get("total"),
            "timings": self.timings,
            "teacher": self.teacher,
            "student": self.student,
            "engine": self.engine,
            "screening": self.screening,
            "plots": self.plots,
            "per_node": [dataclasses.asdict(o) for o in self.node_outcomes],
            "config": self.config,
        }

    def to_json(self) -> str:
        return json.dumps(json_safe(self.to_dict()), indent=2) + "\n"

    def to_markdown(self) -> str:
        plots = [f"- {name}: `{path}`" for name, path in self.plots.items()]
        return "\n".join([*self._summary_lines(), "", *self._node_lines(), "",
                          *(["Plots:", *plots, ""] if plots else [])])

    def _summary_lines(self) -> list[str]:
        d = self.to_dict()
        rows = [
            ("status", self.status + (f" ({self.error})" if self.error else "")),
            ("nodes queried / answered / accepted", f"{d['nodes']} / {d['nodes_answered']} / {d['payloads_accepted']}"),
            ("payloads rejected", str(d["payloads_rejected"])),
            ("requests refused by site policy", str(d["requests_refused"])),
            ("teacher", f"{self.teacher.get('arch', '?')} accuracy {_pct(d['teacher_accuracy'])}"),
            ("student", f"{self.student.get('arch', '?')} accuracy {_pct(d['student_accuracy'])}"),
            ("federated evaluation (mean / weighted)",
             f"{_pct(d['federated_eval_mean'])} / {_pct(d['federated_eval_weighted_mean'])}"),
            ("screening (samples kept / received)", _screening_line(self.screening)),
            ("student checkpoint", str(self.student.get("path", "-"))),
            ("time", ", ".join(f"{k} {v:.1f}s" for k, v in self.timings.items())),
        ]
        return ["| run | |", "|---|---|", *[f"| {k} | {v} |" for k, v in rows]]

    def _node_lines(self) -> list[str]:
        head = ("| node | status | source | method | samples | IPC | (epsilon, delta) | audit: MIA AUC / memorised "
                "| condense s | local train/test | fed-eval acc | reason |")
        lines = [head, "|" + "---|" * 12]
        for o in self.node_outcomes:
            eps = "-" if o.epsilon is None else (f"{o.epsilon:.3g}" if math.isfinite(o.epsilon) else "inf")
            eps = eps if o.delta is None or o.epsilon is None else f"({eps}, {o.delta:.0e})"
            secs = "-" if o.condense_seconds is None else f"{o.condense_seconds:.1f}"
            local = f"{_int(o.local_train)}/{_int(o.local_test)}"
            acc = _pct(o.eval_accuracy) if o.eval_accuracy is not None else (o.eval_error[:40] or "-")
            reason = o.reason.replace("|", "/").replace("\n", " ") or "-"  # whole: a refusal names its policy key
            lines.append(f"| {o.node_id} | {o.status} | {o.source or '-'} | {o.method or '-'} | {o.num_samples} "
                         f"| {o.ipc} | {eps} | {_audit(o.audit)} | {secs} | {local} | {acc} | {reason} |")
        return lines

    def write(self, directory: str | Path) -> tuple[Path, Path]:
        """Write ``report.json`` and ``report.md`` into ``directory`` (atomically) and return their paths."""
        directory = Path(directory)
        json_path = atomic_write_text(directory / "report.json", self.to_json())
        md_path = atomic_write_text(directory / "report.md", self.to_markdown())
        return json_path, md_path


def _audit(figures: dict[str, float]) -> str:
    """The site's strongest payload attack's AUC and the share of its images memorised (docs/privacy.md#audit)."""
    auc, share = figures.get("audit-mia-auc"), figures.get("audit-memorization-share")
    if auc is None and share is None:
        return "-"
    return f"{'-' if auc is None else f'{auc:.3f}'} / {'-' if share is None else f'{100 * share:.0f}%'}"


def _screening_line(screening: dict[str, Any]) -> str:
    if not screening.get("enabled"):
        return "off" if screening else "-"
    rejected = [f"{name} ({site['rejected']})" for name, site in screening["sites"].items() if site["rejected"]]
    text = f"{screening['kept_samples']} / {screening['total_samples']}"
    return text + (f"; rejected: {'; '.join(rejected)}" if rejected else "")


def _fraction(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and 0.0 <= value <= 1.0


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100.0 * value:.2f}%"


def _int(value: int | None) -> str:
    return "-" if value is None else str(value)


# ---- per-site plots -------------------------------------------------------------------------------------
def write_site_plots(directory: str | Path, payloads: dict[int, CondensedPayload],
                     class_names: list[str]) -> dict[str, str]:
    """``labels.png`` and one ``node-<id>.png`` grid per payload with images, into ``directory``; name -> path.
    A payload without images (another payload kind) is left out of both."""
    from shared.viz import save_class_grid

    directory = Path(directory)
    shown = {n: p for n, p in sorted(payloads.items()) if len(p) and p.images.ndim == 4}
    if not shown:
        return {}
    written = {"site label distributions": str(plot_site_labels(
        {n: p.labels.tolist() for n, p in shown.items()}, class_names, directory / "labels.png"))}
    for node, payload in shown.items():
        path = save_class_grid(directory / f"node-{node}.png", payload.images, payload.labels, len(class_names))
        written[f"node {node} payload"] = str(path)
    return written


def plot_site_labels(labels: dict[int, list[int]], class_names: list[str], path: Path) -> Path:
    """A stacked bar per site of how many received samples each class has (flwr-datasets' plotting)."""
    import matplotlib

    matplotlib.use("Agg")
    from flwr_datasets.visualization import plot_label_distributions
    from matplotlib import pyplot as plt

    partitioner = _payload_partitioner(labels, class_names)
    fig, ax, _ = plot_label_distributions(
        partitioner, label_name="label", plot_type="bar", size_unit="absolute", legend=len(class_names) <= 20,
        legend_title="class", title="Condensed samples received per site and class", verbose_labels=True)
    ax.set_xticks(range(len(labels)), [f"node {n}" for n in labels], rotation=45, ha="right", fontsize=7)
    ax.set_xlabel("site")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return path


def _payload_partitioner(labels: dict[int, list[int]], class_names: list[str]) -> Any:
    """A flwr-datasets ``Partitioner`` whose partition ``i`` is the ``i``-th site's payload labels (flwr-datasets
    and Hugging Face ``datasets`` are imported only here: a run without plots does not pay for them)."""
    from datasets import ClassLabel, Dataset, Features
    from flwr_datasets.partitioner import Partitioner

    class PayloadPartitioner(Partitioner):
        def __init__(self) -> None:
            super().__init__()
            rows = [label for node in labels for label in labels[node]]
            self.dataset = Dataset.from_dict({"label": rows},
                                             features=Features({"label": ClassLabel(names=class_names)}))
            self.ranges, start = [], 0
            for node in labels:
                self.ranges.append(range(start, start + len(labels[node])))
                start += len(labels[node])

        @property
        def num_partitions(self) -> int:
            return len(self.ranges)

        def load_partition(self, partition_id: int) -> Any:
            return self.dataset.select(self.ranges[partition_id])

    return PayloadPartitioner()
