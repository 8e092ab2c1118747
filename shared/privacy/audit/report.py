"""The audit's result: memorisation and attack figures, as JSON (``audit.json``), Markdown and the flat
``audit-*`` metrics a ClientApp reply carries."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from shared.io import atomic_write_text, json_safe
from shared.privacy.audit.memorization import Memorization
from shared.privacy.audit.roc import AttackResult

# reply metric names (what ``AuditReport.metrics`` returns)
METRIC_AUC, METRIC_TPR = "audit-mia-auc", "audit-mia-tpr-1pct-fpr"
METRIC_RATIO, METRIC_SHARE = "audit-memorization-ratio", "audit-memorization-share"


@dataclass
class AuditReport:
    """Everything one audit measured. ``attacks``: on the payload; ``student_attacks``: on a student."""

    subject: dict[str, Any]  # what was audited: payload method, IPC, images, epsilon; student arch
    site: dict[str, Any]  # members, non-members, candidates per side, data source
    memorization: list[Memorization] = field(default_factory=list)
    attacks: list[AttackResult] = field(default_factory=list)
    student_attacks: list[AttackResult] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)  # shadows, seed, max candidates
    seconds: float = 0.0
    command: str = ""
    date: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    # ---- the figures a policy judges -------------------------------------------------------------------
    @property
    def max_auc(self) -> float | None:
        """The strongest payload attack's AUC (None when no payload attack ran)."""
        return max((a.auc for a in self.attacks), default=None)

    @property
    def max_tpr_at_1pct(self) -> float | None:
        return max((a.tpr_at_1pct_fpr for a in self.attacks), default=None)

    @property
    def max_share(self) -> float | None:
        """The largest share of payload images below the held-out 5% quantile, over the spaces measured."""
        return max((m.share_below_q05 for m in self.memorization), default=None)

    def pixel_ratio(self) -> float | None:
        return next((m.ratio for m in self.memorization if m.space == "pixel"), None)

    def metrics(self) -> dict[str, float]:
        """Flat, finite ``audit-*`` metrics for a Flower reply (MetricRecord)."""
        values = {METRIC_AUC: self.max_auc, METRIC_TPR: self.max_tpr_at_1pct, METRIC_RATIO: self.pixel_ratio(),
                  METRIC_SHARE: self.max_share}
        return {k: float(v) for k, v in values.items() if v is not None and math.isfinite(v)}

    # ---- output ----------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"date": self.date, "command": self.command, "subject": self.subject, "site": self.site,
                "settings": self.settings, "seconds": self.seconds,
                "summary": {"max_auc": self.max_auc, "max_tpr_at_1pct_fpr": self.max_tpr_at_1pct,
                            "pixel_memorization_ratio": self.pixel_ratio(), "max_share_below_q05": self.max_share},
                "memorization": [m.to_dict() for m in self.memorization],
                "attacks": [a.to_dict() for a in self.attacks],
                "student_attacks": [a.to_dict() for a in self.student_attacks]}

    def to_json(self) -> str:
        return json.dumps(json_safe(self.to_dict()), indent=2) + "\n"

    def to_markdown(self) -> str:
        subject = ", ".join(f"{k} {v}" for k, v in self.subject.items())
        site = ", ".join(f"{k} {v}" for k, v in self.site.items())
        lines = [f"# condex audit ({self.date})", "", f"- subject: {subject}", f"- site: {site}",
                 f"- settings: {', '.join(f'{k} {v}' for k, v in self.settings.items())}",
                 f"- time: {self.seconds:.1f} s", ""]
        if self.memorization:
            lines += ["| space | median NN ratio (payload/test) | share below test 5% quantile |", "|---|---|---|"]
            lines += [f"| {m.space} | {m.ratio:.3f} | {100 * m.share_below_q05:.1f}% |" for m in self.memorization]
            lines.append("")
        for title, attacks in (("payload attacks", self.attacks), ("student attacks", self.student_attacks)):
            if attacks:
                lines += [f"| {title} | AUC | TPR @ 1% FPR | TPR @ 0.1% FPR | members / non-members | note |",
                          "|---|---|---|---|---|---|"]
                lines += [f"| {a.name} | {a.auc:.3f} | {100 * a.tpr_at_1pct_fpr:.1f}% | "
                          f"{100 * a.tpr_at_01pct_fpr:.1f}% | {a.members} / {a.non_members} | {a.note} |"
                          for a in attacks]
                lines.append("")
        return "\n".join(lines)

    def write(self, path: str | Path) -> tuple[Path, Path]:
        """``path`` (JSON) and the Markdown beside it (same name, ``.md``), each written atomically."""
        path = Path(path)
        return atomic_write_text(path, self.to_json()), atomic_write_text(path.with_suffix(".md"), self.to_markdown())
