"""Plots and progress of a run (issue 12.7): the t-SNE of teacher features, the federated report's per-site
label distributions and payload grids, the progress lines a Flower run streams, optional TensorBoard."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from server.distillation.plots import plot_feature_tsne
from server.distillation.watch import RunWatcher, check_tensorboard, progress_line
from server.flower.report import RunReport, write_site_plots
from shared.errors import ConfigError
from shared.models import build_model

ROOT = Path(__file__).resolve().parents[1]


def _groups(n: int = 20) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    torch.manual_seed(0)
    return {name: (torch.randn(n, 3, 16, 16), torch.arange(n) % 4) for name in ("real", "condensed", "synthetic")}


def test_tsne_of_teacher_features_of_condensed_and_synthetic_samples(tmp_path: Path) -> None:
    teacher = build_model("resnet8", num_classes=4, in_channels=3, image_size=16, width=4).eval()
    path = plot_feature_tsne(teacher, _groups(), tmp_path / "plots" / "tsne.png", ["a", "b", "c", "d"])
    assert path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="fewer than 5 samples"):
        plot_feature_tsne(teacher, {"condensed": (torch.randn(3, 3, 16, 16), torch.arange(3))}, tmp_path / "x.png",
                          ["a", "b", "c", "d"])


class _Payload:
    """The two fields ``write_site_plots`` reads from a ``CondensedPayload``."""

    def __init__(self, labels: list[int], channels: int = 1) -> None:
        self.labels = torch.tensor(labels, dtype=torch.long)
        self.images = torch.rand(len(labels), channels, 8, 8) if labels else torch.empty(0)

    def __len__(self) -> int:
        return len(self.labels)


def test_report_writes_per_site_label_distributions_and_payload_grids(tmp_path: Path) -> None:
    payloads = {4: _Payload([0, 0, 1, 3]), 9: _Payload([2, 2, 2]), 12: _Payload([])}  # node 12: no images
    written = write_site_plots(tmp_path / "sites", payloads, ["zero", "one", "two", "three"])  # type: ignore[arg-type]
    assert set(written) == {"site label distributions", "node 4 payload", "node 9 payload"}
    assert all(Path(p).is_file() for p in written.values())
    report = RunReport(command="pytest", config={}, plots=written)
    assert report.to_dict()["plots"] == written
    assert "Plots:" in report.to_markdown() and "labels.png" in report.to_markdown()
    assert write_site_plots(tmp_path / "none", {}, ["a", "b"]) == {}


def test_progress_lines_show_training_time_epoch_losses_and_accuracy() -> None:
    assert progress_line(None, None, 12.0) == "distilling: starting (12s, no epoch finished yet)"
    line = progress_line({"epoch": 40, "seconds": 125.2, "kd_loss": 0.81234, "pool": 10240},
                         {"accuracy": 0.612, "seconds": 120.0}, 130.0)
    assert line == "distilling: 125s of training, epoch 40, kd_loss 0.8123, pool 1.024e+04; accuracy 61.20% at 120s"


def test_the_watcher_reports_at_least_every_period_and_on_each_evaluation(tmp_path: Path) -> None:
    metrics = tmp_path / "metrics.jsonl"
    said: list[str] = []
    with RunWatcher(metrics, said.append, every=0.3, poll=0.05) as watcher:
        time.sleep(0.5)  # nothing written yet: still a line
        with metrics.open("a") as handle:
            handle.write(json.dumps({"event": "epoch", "epoch": 1, "seconds": 2.0, "kd_loss": 1.5}) + "\n")
            handle.write(json.dumps({"event": "eval", "epoch": 1, "seconds": 2.0, "accuracy": 0.25}) + "\n")
            handle.write('{"event": "epoch", "epo')  # a torn last line is left for later
        time.sleep(0.5)
    assert said[0].startswith("distilling: starting")
    assert any("epoch 1, kd_loss 1.5; accuracy 25.00% at 2s" in line for line in said), said
    assert said[-1].endswith("(finished)")
    assert watcher.records == 2


def test_tensorboard_is_optional_and_never_imported_unless_enabled() -> None:
    check_tensorboard(False)
    code = ("import sys, server.flower.app, server.cli, server.distillation.watch as w\n"
            "with w.RunWatcher('/nonexistent/metrics.jsonl', print, poll=0.01): pass\n"
            "print(sorted(m for m in sys.modules if 'tensorboard' in m))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_tensorboard_enabled_without_the_package_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else
                        real_find_spec(name, *a))  # as on a machine without the extra
    with pytest.raises(ConfigError, match=r"tensorboard=true .*pip install 'condex\[tensorboard\]'"):
        check_tensorboard(True)


def test_tensorboard_events_of_each_record(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text(json.dumps({"event": "eval", "seconds": 3.0, "accuracy": 0.5}) + "\n")
    with RunWatcher(metrics, lambda _: None, tensorboard_dir=tmp_path / "tb", poll=0.05):
        pass
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    tags = events.Tags()["scalars"]
    accuracy = [tag for tag in tags if tag.endswith("accuracy")]
    assert accuracy, tags
    assert [round(e.value, 6) for e in events.Scalars(accuracy[0])] == [0.5]


def test_report_shows_each_sites_privacy_and_audit() -> None:
    from server.flower.report import NodeOutcome

    dp = NodeOutcome(3, "accepted", method="dp-dm", num_samples=90, ipc=10, epsilon=9.99, delta=1e-5,
                     audit={"audit-mia-auc": 0.507, "audit-memorization-share": 0.0})
    dm = NodeOutcome(4, "accepted", method="dm", num_samples=80, ipc=10, epsilon=math.inf,
                     audit={"audit-mia-auc": 0.528, "audit-memorization-share": 1.0})
    unaudited = NodeOutcome(5, "refused", method="dm", reason="policy-require-dp=true: ...")
    rows = {line.split(" | ")[0]: line for line in RunReport(command="pytest", config={},
            node_outcomes=[dp, dm, unaudited]).to_markdown().splitlines() if line.startswith("| ")}
    assert "| (9.99, 1e-05) | 0.507 / 0% |" in rows["| 3"]
    assert "| inf | 0.528 / 100% |" in rows["| 4"]
    assert "| dm | 0 | 0 | - | - |" in rows["| 5"]
