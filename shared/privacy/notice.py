"""The warning a non-DP condensation earns, with what the audit measured for such a payload.

Printed by ``condex condense`` and logged by the ServerApp whenever ``condense.method`` is not DP, so the
choice to send near-copies of private images is never silent. The figure is the audit of a default-job
``dm`` payload (docs/privacy.md#audit: ``condex audit`` on 2026-12-01)."""

from __future__ import annotations

DM_AUDIT = ("a dm IPC 10 payload of the default job (site 0, 45 s, real init) audited on 2026-12-01 had 100% of "
            "its images closer to a training image than 95% of held-out images are (pixel nearest-neighbour "
            "ratio 0.19; docs/privacy.md#audit)")


def non_dp_warning(method: str) -> str:
    """One line for a non-DP ``method``; ``real`` sends the images themselves."""
    if method == "real":
        what = "sends the site's own images"
    else:
        what = f"is not differentially private and its images stay close to private ones: {DM_AUDIT}"
    return (f"warning: condense.method={method} {what}; for payloads that leave a site use a DP method "
            "(condense.method=dp-dm condense.epsilon=10)")
