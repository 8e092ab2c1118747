"""Crash-safe distillation runs (issue 13.5): a first checkpoint before any training and a time cadence,
temp files of interrupted writes removed, a torn metrics line tolerated, ``state.pt`` loaded with
``weights_only=True`` (a planted file cannot run code), another condensed set refused, and ``--resume``
needing only ``--out``. The kill -9 measurement itself is ``scripts/kill_resume.py`` (docs/robustness.md)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from server.distillation import CondensedSet, Distiller
from server.run import RunDir
from shared.checkpoint import save_checkpoint
from shared.cli import main
from shared.errors import CheckpointError
from tests.test_distill import run, tiny_cfg

pytestmark = pytest.mark.usefixtures("one_thread")


def test_a_fresh_run_checkpoints_before_training_and_then_by_time(tiny_teacher, tiny_condensed, engine_data,
                                                                  tmp_path: Path) -> None:
    net, card = tiny_teacher
    cfg = tiny_cfg(checkpoint_every=0, checkpoint_every_seconds=60.0)
    distiller = Distiller(cfg, net, card, tiny_condensed, engine_data[1], tmp_path / "r", seed=1, progress=False)
    distiller._start_run()  # what fit() does first
    state = distiller.run.load_state()
    assert state["epoch"] == 0 and json.loads((tmp_path / "r" / "run.json").read_text())["seed"] == 1
    distiller.run_epoch()
    distiller.last_epoch_seconds = distiller.train_seconds
    assert not distiller._checkpoint_due()  # far below 60 s of unsaved training
    distiller.cfg.checkpoint_every_seconds = distiller.train_seconds * 1.5  # the next epoch would pass it
    assert distiller._checkpoint_due()


def test_stale_temp_files_are_removed_and_a_torn_metrics_line_is_tolerated(tiny_teacher, tiny_condensed,
                                                                           engine_data, tmp_path: Path) -> None:
    out = tmp_path / "r"
    run(tiny_teacher, tiny_condensed, engine_data[1], out, epochs=2)
    stale = [out / ".state.pt.abcd1234.pt", out / ".metrics.jsonl.zz9_ab12.tmp",
             out / "student" / ".card.json.x1y2z3w4.tmp"]
    for path in stale:
        path.write_bytes(b"half a write")
    (out / ".student.old").mkdir()
    keep = out / ".DS_Store"
    keep.write_bytes(b"\0")
    with (out / "metrics.jsonl").open("a") as handle:
        handle.write('{"event": "epoch", "epoch": 3, "kd_lo')  # killed in the middle of a line
    distiller, _ = run(tiny_teacher, tiny_condensed, engine_data[1], out, resume=True, epochs=3)
    assert distiller.epoch == 3
    assert not any(p.exists() for p in stale) and not (out / ".student.old").exists() and keep.exists()
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records if r["event"] == "epoch"] == [1, 2, 3]


def test_a_torn_line_in_the_middle_is_named(tmp_path: Path) -> None:
    run_dir = RunDir(tmp_path)
    run_dir.metrics_file.write_text('{"epoch": 1}\n{"epo\n{"epoch": 2}\n')
    with pytest.raises(CheckpointError, match="line 2"):
        run_dir.read_metrics()


class _Planted:
    def __reduce__(self):  # unpickling would call Path.touch on the marker: code run from a data file
        return (Path.touch, (Path(self.marker),))


@pytest.mark.parametrize("content", ["garbage", "planted", "truncated", "foreign"])
def test_a_bad_state_file_is_a_named_error_and_runs_no_code(tiny_teacher, tiny_condensed, engine_data,
                                                           tmp_path: Path, content: str) -> None:
    out = tmp_path / "r"
    run(tiny_teacher, tiny_condensed, engine_data[1], out, epochs=1)
    state_file = out / "state.pt"
    marker = tmp_path / "code-ran"
    if content == "garbage":
        state_file.write_bytes(b"\x00garbage" * 100)
    elif content == "planted":
        planted = _Planted()
        planted.marker = str(marker)
        torch.save({"epoch": 1, "config": {}, "evil": planted}, state_file)
    elif content == "truncated":
        state_file.write_bytes(state_file.read_bytes()[:1000])
    else:
        torch.save([1, 2, 3], state_file)
    with pytest.raises(CheckpointError, match=r"state\.pt"):
        run(tiny_teacher, tiny_condensed, engine_data[1], out, resume=True, epochs=2)
    assert not marker.exists()


def test_resume_refuses_another_condensed_set(tiny_teacher, tiny_condensed, fmnist_train, engine_data,
                                              tmp_path: Path) -> None:
    run(tiny_teacher, tiny_condensed, engine_data[1], tmp_path / "r", epochs=1)
    other = CondensedSet.from_real(fmnist_train, 3, seed=1)
    with pytest.raises(CheckpointError, match="different condensed set"):
        run(tiny_teacher, other, engine_data[1], tmp_path / "r", resume=True, epochs=2)
    distiller, _ = run(tiny_teacher, copy.deepcopy(tiny_condensed), engine_data[1], tmp_path / "r", resume=True,
                       epochs=2)
    assert distiller.epoch == 2


def test_resume_needs_only_out(tiny_teacher, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    net, card = tiny_teacher
    teacher = save_checkpoint(tmp_path / "teacher", net, copy.deepcopy(card))
    out = tmp_path / "run"
    small = ["distill.synthesis-batch-size=16", "distill.generator-width=8", "distill.kd-batch-size=32",
             "distill.kd-steps=2", "distill.condensed-batch-size=16", "distill.discriminator-hidden=16",
             "distill.warmup-epochs=0", "distill.eval-samples=100", "distill.latent-dim=16"]
    sets = [x for item in small for x in ("--set", item)]
    assert main(["distill", "--teacher", str(teacher), "--condensed", "real:2", "--epochs", "1", "--out", str(out),
                 "--no-progress", "--seed", "3", *sets]) == 0
    assert main(["distill", "--out", str(out), "--resume", "--epochs", "2", "--no-progress"]) == 0
    assert "after 2 epochs" in capsys.readouterr().out
    saved = json.loads((out / "run.json").read_text())
    assert saved["seed"] == 3 and saved["provenance"]["condensed"] == "real:2"
    # a changed engine setting on resume is still refused, by name
    assert main(["distill", "--out", str(out), "--resume", "--epochs", "3", "--set", "distill.kd-steps=5",
                 "--no-progress"]) == 2
    assert "distill.kd_steps" in capsys.readouterr().err
    assert main(["distill", "--out", str(tmp_path / "nothing"), "--resume"]) == 2
    assert "run.json" in capsys.readouterr().err


def test_a_torn_sweep_row_is_skipped(tmp_path: Path) -> None:
    from simulations.run import RESULTS_JSONL, append_result, result_row

    append_result(tmp_path, result_row("0", ["data.alpha=0.1"], {"status": "completed"}))
    with (tmp_path / RESULTS_JSONL).open("a") as handle:
        handle.write('{"job": "1", "overr')  # the job was killed while its row was written
    table = append_result(tmp_path, result_row("2", ["data.alpha=1.0"], {"status": "failed"}))
    rows = [line for line in table.read_text().splitlines() if line.startswith("| 0 ") or line.startswith("| 2 ")]
    assert len(rows) == 2
