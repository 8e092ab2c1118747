"""Privacy audit of what a site sends: nearest-neighbour memorisation and membership inference.

``audit_payload`` measures a payload against the site's training (member) and held-out (non-member)
images; ``audit_student`` attacks a student. See ``memorization`` (distance ratios), ``mia`` (the attacks
and exactly what the LiRA variant computes), ``roc`` (AUC, TPR at low FPR) and ``report`` (``audit.json``,
Markdown, the ``audit-*`` reply metrics). docs/privacy.md ("Audit") has the measured figures."""

from shared.privacy.audit.core import AuditSettings, audit_payload, audit_student
from shared.privacy.audit.memorization import Memorization, teacher_embedding
from shared.privacy.audit.report import METRIC_AUC, METRIC_RATIO, METRIC_SHARE, METRIC_TPR, AuditReport
from shared.privacy.audit.roc import AttackResult, evaluate_attack

__all__ = [
    "METRIC_AUC", "METRIC_RATIO", "METRIC_SHARE", "METRIC_TPR", "AttackResult", "AuditReport", "AuditSettings",
    "Memorization", "audit_payload", "audit_student", "evaluate_attack", "teacher_embedding",
]
