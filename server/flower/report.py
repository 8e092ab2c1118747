"""The run report of one federated job: what every node sent (or why it was refused), teacher and student
accuracy, federated evaluation and timings. Written as JSON (machine-readable, the schema of
``benchmarks/results/default-job.json``) and as a Markdown table (printed at the end of the run)."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from shared.io import atomic_write_text, json_safe

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
            "per_node": [dataclasses.asdict(o) for o in self.node_outcomes],
            "config": self.config,
        }

    def to_json(self) -> str:
        return json.dumps(json_safe(self.to_dict()), indent=2) + "\n"

    def to_markdown(self) -> str:
        return "\n".join([*self._summary_lines(), "", *self._node_lines(), ""])

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
        head = ("| node | status | source | method | samples | IPC | epsilon | condense s | local train/test "
                "| fed-eval acc | reason |")
        lines = [head, "|" + "---|" * 11]
        for o in self.node_outcomes:
            eps = "-" if o.epsilon is None else (f"{o.epsilon:.3g}" if math.isfinite(o.epsilon) else "inf")
            secs = "-" if o.condense_seconds is None else f"{o.condense_seconds:.1f}"
            local = f"{_int(o.local_train)}/{_int(o.local_test)}"
            acc = _pct(o.eval_accuracy) if o.eval_accuracy is not None else (o.eval_error[:40] or "-")
            reason = o.reason.replace("|", "/").replace("\n", " ") or "-"  # whole: a refusal names its policy key
            lines.append(f"| {o.node_id} | {o.status} | {o.source or '-'} | {o.method or '-'} | {o.num_samples} "
                         f"| {o.ipc} | {eps} | {secs} | {local} | {acc} | {reason} |")
        return lines

    def write(self, directory: str | Path) -> tuple[Path, Path]:
        """Write ``report.json`` and ``report.md`` into ``directory`` (atomically) and return their paths."""
        directory = Path(directory)
        json_path = atomic_write_text(directory / "report.json", self.to_json())
        md_path = atomic_write_text(directory / "report.md", self.to_markdown())
        return json_path, md_path


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
