"""Write the benchmark results: JSON (schema of issue 3), a Markdown table and a PNG of sample grids."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from shared.io import atomic_path, atomic_write_text
from shared.payload import CondensedPayload
from shared.viz import class_grid


def write_json(path: Path, header: dict[str, Any], records: list[dict[str, Any]]) -> None:
    atomic_write_text(path, json.dumps({**header, "records": records}, indent=2) + "\n")


def read_records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return list(json.loads(path.read_text()).get("records", []))


def read_header(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    return {k: v for k, v in json.loads(path.read_text()).items() if k != "records"}


def markdown(header: dict[str, Any], records: list[dict[str, Any]], pending: list[str]) -> str:
    lines = [
        "# Condensation benchmark (Fashion-MNIST)", "",
        f"- date: {header['date']}", f"- command: `{header['command']}`", f"- machine: {header['machine']}",
        f"- protocol: {header['protocol']}", "",
        "| method | setting | IPC | epsilon (target / reported) | test accuracy (mean ± std) | images "
        "| condensation s (slowest client) | iterations | eval epochs |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        eps = "-" if r["epsilon"] is None else f"{r['epsilon']:g} / {r.get('epsilon_reported', float('nan')):.3g}"
        iterations = r.get("iterations", max(r.get("client_iterations", [0]) or [0]))
        lines.append(
            f"| {r['method']} | {r['setting']} | {r['ipc']} | {eps} | {100 * r['accuracy_mean']:.2f} ± "
            f"{100 * r['accuracy_std']:.2f} | {r['num_images']} | {r['seconds_per_client']:.1f} | {iterations} "
            f"| {r['eval_epochs']} |"
        )
    if pending:
        lines += ["", "Not measured (run did not reach them): " + ", ".join(pending)]
    return "\n".join(lines) + "\n"


def write_markdown(path: Path, header: dict[str, Any], records: list[dict[str, Any]], pending: list[str]) -> None:
    atomic_write_text(path, markdown(header, records, pending))


def write_png(path: Path, payload_files: list[tuple[str, Path]], per_class: int = 10) -> None:
    """One panel per payload (row = class), titled with the case name."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(title, CondensedPayload.load(file)) for title, file in payload_files if file.exists()]
    if not panels:
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.6), squeeze=False)
    for ax, (title, payload) in zip(axes[0], panels, strict=True):
        ax.imshow(class_grid(payload.images, payload.labels, payload.meta.num_classes, per_class))
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
