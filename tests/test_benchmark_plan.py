"""The distillation benchmark's case plan, parallel scheduler and target bookkeeping (no training)."""

from __future__ import annotations

import argparse
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from benchmarks.distillation import plan
from benchmarks.distillation.__main__ import parse_args, selected_cases
from benchmarks.distillation.breadth import breadth_cases, breadth_targets
from benchmarks.distillation.report import summarize


def record(case: str, accuracy: float, **extra: Any) -> dict[str, Any]:
    base, _, mode = case.partition("@")[0].partition(":")
    return {"case": case, "base": base, "mode": mode, "student_accuracy": accuracy, "seconds": 10.0,
            "forward_backward_fraction": 0.9, "peak_memory_mb": 100.0, **extra}


def test_case_names_are_unique_and_cover_both_issues() -> None:
    names = [c.name for c in plan.core_cases() + breadth_cases()]
    assert len(names) == len(set(names))
    assert {"none:cs-only", "fast:mi*", "deepinversion:mi+cs", "full", "cmi:mi*", "fast:mi@replay=generative",
            "fast:mi*@replay=generative,budget=x2", "fast:mi*@sampler=ssd,synthetic=1/4",
            "fast:mi*@kd_loss=kl_logit_std"} <= set(names)


def test_quarter_cap_needs_the_core_fast_star_record() -> None:
    with pytest.raises(RuntimeError, match="fast:mi"):
        plan.quarter_cap([])
    assert plan.quarter_cap([record("fast:mi*", 0.7, synthetic_samples_seen=1001)]) == 250


def test_case_command_sets_case_overrides_after_global_ones(tmp_path: Path) -> None:
    args = parse_args(["--budget-seconds", "10", "--set", "distill.kd_steps=3"])
    ssd = next(c for c in breadth_cases() if c.name == "fast:mi*@sampler=ssd,synthetic=1/4")
    cmd = plan.case_command(ssd, args, "teacher", tmp_path / "p", tmp_path / "o",
                            [record("fast:mi*", 0.7, synthetic_samples_seen=400)])
    sets = [cmd[i + 1] for i, x in enumerate(cmd) if x == "--set"]
    assert sets == ["distill.kd_steps=3", "distill.sampler=ssd", "distill.synthetic_budget=100", "distill.pool_cap=100"]
    long = next(c for c in breadth_cases() if c.budget_factor == 2.0)
    long_cmd = plan.case_command(long, args, "t", tmp_path, tmp_path, [])
    assert long_cmd[long_cmd.index("--budget-seconds") + 1] == "20.0"


def test_selected_cases_rejects_unknown_names() -> None:
    with pytest.raises(SystemExit, match="breadth cases need --breadth"):
        selected_cases(parse_args(["--only", "cmi:mi*"]))
    assert [c.name for c in selected_cases(parse_args(["--breadth", "--only", "cmi:mi*"]))] == ["cmi:mi*"]


def test_run_cases_runs_in_parallel_and_waits_for_dependencies(monkeypatch: pytest.MonkeyPatch,
                                                               tmp_path: Path) -> None:
    lock, active, peak, started = threading.Lock(), [0], [0], []

    def fake_run_case(case: plan.Case, args: argparse.Namespace, teacher: str, payload: Path, work: Path,
                      records: list[dict[str, Any]]) -> dict[str, Any]:
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
            started.append((case.name, {r["case"] for r in records}))
        time.sleep(0.02)
        with lock:
            active[0] -= 1
        return record(case.name, 0.5, synthetic_samples_seen=40)

    monkeypatch.setattr(plan, "run_case", fake_run_case)
    cases = plan.core_cases() + breadth_cases()
    records: list[dict[str, Any]] = [record("none:cs-only", 0.7)]
    seen: list[str] = []
    plan.run_cases(cases, parse_args(["--workers", "2"]), "t", tmp_path, tmp_path, records,
                   lambda r: seen.append(r["case"]))
    assert peak[0] == 2
    assert sorted(seen) == sorted(c.name for c in cases if c.name != "none:cs-only")  # the done case is kept
    assert started[0][0].endswith("budget=x2")  # longest first
    for name, done in started:
        if "synthetic=1/4" in name:
            assert "fast:mi*" in done


def test_core_targets_ignore_breadth_variants_and_breadth_targets_are_reported() -> None:
    records = [record("none:cs-only", 0.70), record("fast:mi", 0.60), record("fast:mi+cs", 0.71),
               record("fast:mi*", 0.75), record("fast:mi*@kd_loss=kl_logit_std", 0.99),
               record("cmi:mi+cs", 0.70), record("cmi:mi*", 0.73),
               record("fast:mi@replay=generative", 0.60, peak_memory_mb=100.0),
               record("fast:mi@replay=generative,budget=x2", 0.61, peak_memory_mb=105.0),
               {**record("full", 0.86), "mode": "full-data"}]
    results = summarize({}, records)
    assert results["targets"]["fast"]["mi*"] == 0.75
    assert results["targets"]["fast"]["gain_target_met"] is True
    assert results["targets"]["fast"]["full_data_target_met"] is False
    breadth = breadth_targets(records)
    assert breadth["cmi"]["met"] is True
    assert breadth["generative_mi"]["memory_met"] is True
    assert breadth["generative_mi"]["accuracy_met"] is True
    assert results["breadth_targets"]["kl_logit_std"]["vs_kl_points"] == pytest.approx(24.0)
