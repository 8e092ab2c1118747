"""The distillation benchmark's case plan, seeds, parallel scheduler, statistics and targets (no training)."""

from __future__ import annotations

import argparse
import json
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from benchmarks.distillation import plan, stats
from benchmarks.distillation.__main__ import main, parse_args, selected_cases
from benchmarks.distillation.breadth import breadth_cases, breadth_targets
from benchmarks.distillation.cases import converged, cosine_lr
from benchmarks.distillation.report import summarize, write_markdown, write_png

ROOT = Path(__file__).resolve().parents[1]
SET = plan.DEFAULT_SET


def curve(*points: tuple[float, float]) -> list[dict[str, float]]:
    return [{"seconds": t, "epoch": i, "accuracy": a} for i, (t, a) in enumerate(points)]


def record(case: str, accuracy: float, seed: int = 0, condensed: str | None = SET, **extra: Any) -> dict[str, Any]:
    base, _, mode = case.partition("@")[0].partition(":")
    if case in plan.CEILINGS:
        base, mode, condensed = "none", {"full": "full-data", "full-kd": "full-kd"}[case], None
    return {"case": case, "base": base, "mode": mode, "seed": seed, "condensed": condensed,
            "student_accuracy": accuracy, "seconds": 10.0, "synthesis_seconds": 4.0, "kd_seconds": 5.0,
            "other_seconds": 1.0, "epochs": 7, "forward_backward_fraction": 0.9, "peak_memory_mb": 100.0,
            "curve": curve((0.0, 0.1), (10.0, accuracy)), **extra}


def test_case_names_are_unique_and_cover_the_issues() -> None:
    names = [c.name for c in plan.core_cases() + breadth_cases() + plan.ipc1_cases()]
    assert len(names) == len(set(names))
    assert {"none:cs-only", "fast:mi*", "generative-deepinversion:mi+cs", "full", "full-kd", "cmi:mi*",
            "fast:mi@replay=generative", "fast:mi*@replay=generative,budget=x2", "fast:mi*@sampler=ssd,synthetic=1/4",
            "fast:mi*@kd_loss=kl_logit_std", "fast:mi*@ipc1", "fast:mi@ipc1"} <= set(names)


def test_seeds_expand_into_jobs_on_the_right_sets() -> None:
    cases = plan.core_cases() + breadth_cases()[:1] + plan.ipc1_cases()
    jobs = plan.plan_jobs(cases, [SET, "union"], seeds=3)
    keys = {j.key for j in jobs}
    assert len(keys) == len(jobs)
    assert {(SET, "fast:mi*", s) for s in range(3)} | {("union", "fast:mi*", s) for s in range(3)} <= keys
    assert {(None, "full", s) for s in range(3)} | {(None, "full-kd", s) for s in range(3)} <= keys
    assert {j.condensed for j in jobs if j.case.name == "cmi:mi"} == {SET}  # breadth: the primary set only
    assert {j.condensed for j in jobs if "@ipc1" in j.case.name} == {plan.IPC1_SET}
    assert len(jobs) == 3 * (7 * 2 + 2 + 1 + 2)


def test_quarter_cap_uses_the_mean_of_the_fast_star_records_of_its_set() -> None:
    with pytest.raises(RuntimeError, match="fast:mi"):
        plan.quarter_cap([])
    assert plan.quarter_cap([record("fast:mi*", 0.7, synthetic_samples_seen=1001)]) == 250
    records = [record("fast:mi*", 0.7, 0, synthetic_samples_seen=1000),
               record("fast:mi*", 0.7, 1, synthetic_samples_seen=1200),
               record("fast:mi*", 0.7, 0, "union", synthetic_samples_seen=9000)]
    assert plan.quarter_cap(records, SET) == 275


def test_case_command_passes_seed_set_and_overrides_after_global_ones(tmp_path: Path) -> None:
    args = parse_args(["--budget-seconds", "10", "--set", "distill.kd_steps=3"])
    ssd = next(c for c in breadth_cases() if c.name == "fast:mi*@sampler=ssd,synthetic=1/4")
    sets = {SET: "dm.safetensors"}
    cmd = plan.case_command(plan.Job(ssd, 2, SET), args, "teacher", sets, tmp_path / "o", cap=100)
    sets_given = [cmd[i + 1] for i, x in enumerate(cmd) if x == "--set"]
    assert sets_given == ["distill.kd_steps=3", "distill.sampler=ssd", "distill.synthetic_budget=100",
                          "distill.pool_cap=100"]
    assert cmd[cmd.index("--seed") + 1] == "2" and cmd[cmd.index("--condensed") + 1] == "dm.safetensors"
    full_kd = next(c for c in plan.core_cases() if c.name == "full-kd")
    assert "--condensed" not in plan.case_command(plan.Job(full_kd, 0, None), args, "t", sets, tmp_path)
    long = next(c for c in breadth_cases() if c.budget_factor == 2.0)
    long_cmd = plan.case_command(plan.Job(long, 0, SET), args, "t", sets, tmp_path)
    assert long_cmd[long_cmd.index("--budget-seconds") + 1] == "20.0"
    assert plan.Job(long, 1, SET).directory(tmp_path).parts[-3:] == (SET, long.directory, "seed1")


def test_arguments_cases_and_condensed_sets() -> None:
    with pytest.raises(SystemExit, match="breadth cases need --breadth"):
        selected_cases(parse_args(["--only", "cmi:mi*"]))
    assert [c.name for c in selected_cases(parse_args(["--breadth", "--only", "cmi:mi*"]))] == ["cmi:mi*"]
    assert [c.name for c in selected_cases(parse_args(["--ipc1", "--only", "fast:mi*@ipc1", "full-kd"]))] == \
        ["full-kd", "fast:mi*@ipc1"]
    args = parse_args(["--condensed-set", "union=payloads/", "--condensed-set", "b=x.safetensors"])
    assert args.condensed_set == [("union", "payloads/"), ("b", "x.safetensors")]
    assert args.seeds == 3 and args.full_epochs == 30
    with pytest.raises(SystemExit):
        parse_args(["--condensed-set", "no-path"])


def test_variants_add_each_selected_case_with_its_overrides_and_interleave_by_seed(tmp_path: Path) -> None:
    args = parse_args(["--only", "fast:mi", "--variant", "t4:distill.temperature=4,distill.kd_steps=50",
                       "--variant", "wu:distill.warmup_epochs=10"])
    cases = selected_cases(args)
    assert [c.name for c in cases] == ["fast:mi", "fast:mi@t4", "fast:mi@wu"]
    assert cases[1].spec == "fast:mi" and cases[1].overrides == {"distill.temperature": "4", "distill.kd_steps": "50"}
    jobs = plan.plan_jobs(cases, ["dm"], 2)
    assert [(j.case.name, j.seed) for j in jobs][:3] == [("fast:mi", 0), ("fast:mi@t4", 0), ("fast:mi@wu", 0)]
    command = plan.case_command(jobs[1], args, "teacher", {"dm": "dm.safetensors"}, tmp_path)
    assert command[-4:] == ["--set", "distill.temperature=4", "--set", "distill.kd_steps=50"]
    for bad in ("t4", "t4:", "t4:temperature=4", "t-4:distill.temperature=4", "t4:distill.temperature"):
        with pytest.raises(SystemExit):
            parse_args(["--variant", bad])
    with pytest.raises(SystemExit):
        parse_args(["--variant", "a:distill.x=1", "--variant", "a:distill.y=2"])


@pytest.mark.parametrize("argv", [["--variant", "t:distill.temprature=4"], ["--variant", "t:distill.kd_steps=0"],
                                  ["--set", "distill.kd_steps=many"]])
def test_bad_overrides_stop_the_benchmark_before_any_job(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args(argv)
    assert "distill." in capsys.readouterr().err


def fake_runner(monkeypatch: pytest.MonkeyPatch) -> tuple[list[tuple[plan.JobKey, set[plan.JobKey]]], list[int]]:
    lock, active, peak, started = threading.Lock(), [0], [0], []

    def fake_run_job(job: plan.Job, args: argparse.Namespace, teacher: str, sets: dict[str, str], work: Path,
                     records: list[dict[str, Any]]) -> dict[str, Any]:
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
            started.append((job.key, {plan.record_key(r) for r in records}))
        time.sleep(0.01)
        with lock:
            active[0] -= 1
        return record(job.case.name, 0.5, job.seed, job.condensed, synthetic_samples_seen=40)

    monkeypatch.setattr(plan, "run_job", fake_run_job)
    return started, peak


def test_run_jobs_in_parallel_waits_for_dependencies_and_resume_skips_done_pairs(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    started, peak = fake_runner(monkeypatch)
    jobs = plan.plan_jobs(plan.core_cases() + breadth_cases(), [SET], seeds=2)
    records: list[dict[str, Any]] = [record("none:cs-only", 0.7, seed=1), record("full", 0.9, seed=0)]
    seen: list[plan.JobKey] = []
    plan.run_jobs(jobs, parse_args(["--workers", "2"]), "t", {SET: "p"}, tmp_path, records,
                  lambda r: seen.append(plan.record_key(r)))
    assert peak[0] == 2
    done = {(SET, "none:cs-only", 1), (None, "full", 0)}
    assert sorted(seen, key=str) == sorted((j.key for j in jobs if j.key not in done), key=str)
    assert started[0][0][1].endswith("budget=x2")  # longest first
    fast_star = {(SET, "fast:mi*", s) for s in range(2)}
    for key, finished in started:
        if "synthetic=1/4" in key[1]:
            assert fast_star <= finished  # every planned fast:mi* seed first
    started.clear()
    plan.run_jobs(jobs, parse_args([]), "t", {SET: "p"}, tmp_path, records, lambda r: None)
    assert started == []  # --resume: every (set, case, seed) is done


def test_aggregate_mean_and_sample_std() -> None:
    agg = stats.aggregate([0.7, 0.8, 0.9])
    assert agg["mean"] == pytest.approx(0.8) and agg["std"] == pytest.approx(0.1) and agg["n"] == 3
    assert stats.aggregate([0.5])["std"] is None
    assert stats.aggregate([])["mean"] is None


def test_band_interpolates_seeds_onto_aligned_times() -> None:
    a = [(0.0, 0.0), (10.0, 1.0), (20.0, 1.0)]
    b = [(5.0, 0.5), (15.0, 0.5)]
    points = stats.band([a, b], points=3)
    assert [p["seconds"] for p in points] == [5.0, 10.0, 15.0]  # the range both seeds cover
    assert [p["mean"] for p in points] == pytest.approx([0.5, 0.75, 0.75])
    assert points[1]["std"] == pytest.approx(0.25 * 2 ** 0.5)  # sample std of 1.0 and 0.5
    assert stats.band([a], points=2)[0]["std"] == 0.0
    assert stats.mean_at([a, b], 10.0) == pytest.approx(0.75)
    assert stats.mean_at([a, b], 18.0) is None  # b ends at 15 s


def test_time_to_accuracy_is_the_first_evaluation_at_or_above() -> None:
    c = [(30.0, 0.55), (60.0, 0.72), (90.0, 0.81)]
    assert stats.time_to_accuracy(c, 0.6) == 60.0
    assert stats.time_to_accuracy(c, 0.72) == 60.0
    assert stats.time_to_accuracy(c, 0.8) == 90.0
    assert stats.time_to_accuracy(c, 0.9) is None
    over = stats.times_to_accuracy([c, [(30.0, 0.61), (60.0, 0.7)]])
    assert over["60"] == {"mean_seconds": 45.0, "reached": 2, "seeds": 2}
    assert over["80"] == {"mean_seconds": 90.0, "reached": 1, "seeds": 2}
    assert over["70"]["mean_seconds"] == 60.0


def core_records() -> list[dict[str, Any]]:
    fast_star = [record("fast:mi*", a, s, curve=curve((0.0, 0.1), (30.0, 0.65), (62.0, 0.74), (300.0, a)))
                 for s, a in enumerate((0.78, 0.80, 0.85))]  # mean 0.81
    return [*fast_star, record("none:cs-only", 0.72), record("none:cs-only", 0.74, 1),
            record("fast:mi+cs", 0.82, 0), record("fast:mi+cs", 0.74, 1),  # mean 0.78: one seed beats mi*'s mean
            *[record("fast:mi", 0.60, s, curve=curve((0.0, 0.1), (30.0, 0.65), (62.0, 0.74), (300.0, 0.60)))
              for s in range(3)],  # the data-free loop: fast early, 60% at the end
            record("fast:mi*", 0.99, 0, "union"),
            record("fast:mi*@kd_loss=kl_logit_std", 0.99), record("cmi:mi+cs", 0.70), record("cmi:mi*", 0.73),
            record("fast:mi@replay=generative", 0.60, peak_memory_mb=100.0),
            record("fast:mi@replay=generative,budget=x2", 0.61, peak_memory_mb=105.0),
            record("full", 0.82), record("full", 0.845, 1), record("full-kd", 0.85)]


def test_targets_are_computed_on_means() -> None:
    results = summarize({"primary_set": SET}, core_records())
    fast = results["targets"][SET]["fast"]
    assert fast["mi*"] == pytest.approx(0.81) and fast["seeds"] == 3
    assert fast["best_other_case"] == "fast:mi+cs" and fast["best_other"] == pytest.approx(0.78)
    assert fast["gain_over_best_other_points"] == pytest.approx(3.0) and fast["gain_target_met"] is True
    assert results["full_data_student_accuracy"] == pytest.approx(0.8325)
    assert fast["gap_to_full_data_points"] == pytest.approx(2.25)
    assert fast["within_2_of_full_data_met"] is False and fast["full_data_target_met"] is True
    assert fast["gap_to_full_kd_points"] == pytest.approx(4.0)
    speed = results["targets"][SET]["fast_speed"]
    assert speed["accuracy_at_60s"] == pytest.approx(0.65 + 0.09 * 30 / 32)  # each seed interpolated at 60 s
    assert speed["case"] == "fast:mi"  # the speed target is the data-free loop's
    assert speed["within_60s_met"] is True and speed["at_budget_met"] is False and speed["met"] is False
    assert speed["seconds_to_70_mean"] == 62.0 and speed["seeds_reaching_70"] == 3
    assert results["targets"]["union"]["fast"]["mi*"] == 0.99  # grouped by condensed set
    summary = next(s for s in results["cases"] if s["case"] == "fast:mi*" and s["condensed"] == SET)
    assert summary["accuracy"]["std"] == pytest.approx(stats.aggregate([0.78, 0.80, 0.85])["std"])
    assert summary["band"][0]["n"] == 3 and summary["time_to_accuracy"]["80"]["reached"] == 2
    assert set(results["ceilings"]) == {"full", "full-kd"}


def test_breadth_targets_on_means_and_only_the_primary_set() -> None:
    records = [record("fast:mi*", 0.75), record("fast:mi*", 0.77, 1), record("fast:mi*", 0.10, 0, "union"),
               record("fast:mi*@kd_loss=kl_logit_std", 0.70), record("fast:mi*@kd_loss=kl_logit_std", 0.74, 1),
               record("cmi:mi+cs", 0.70), record("cmi:mi*", 0.73),
               record("fast:mi@replay=generative", 0.60, peak_memory_mb=100.0),
               record("fast:mi@replay=generative", 0.60, 1, peak_memory_mb=110.0),
               record("fast:mi@replay=generative,budget=x2", 0.61, peak_memory_mb=110.0), record("fast:mi", 0.605)]
    results = summarize({"primary_set": SET}, records)
    breadth = results["breadth_targets"]
    assert breadth["kl_logit_std"]["vs_kl_points"] == pytest.approx(-4.0)
    assert breadth["cmi"]["met"] is True
    assert breadth["generative_mi"]["peak_memory_ratio_x2"] == pytest.approx(110 / 105)
    assert breadth["generative_mi"]["accuracy_met"] is True
    assert breadth_targets([record("cmi:mi+cs", 0.7), record("cmi:mi*", 0.71)])["cmi"]["met"] is False


def test_full_data_convergence_rule() -> None:
    history = [0.80, 0.84, 0.86, 0.8605, 0.8609, 0.87]
    stops = [n for n in range(1, len(history) + 1) if converged(history[:n])]
    assert stops[0] == 5  # epochs 4 and 5 did not beat 0.86 by 0.1 point
    assert not converged([0.80, 0.84, 0.86, 0.8605, 0.8611])  # epoch 5 beat it by 0.11 point
    assert not converged([0.8, 0.7])
    assert converged([0.86, 0.85, 0.8609])
    assert cosine_lr(1, 30) == pytest.approx(0.05, rel=2e-3) and cosine_lr(30, 30) < 1e-4


def test_reports_render_and_a_pre_seeds_results_file_is_rewritten(tmp_path: Path) -> None:
    header = {"date": "d", "command": "c", "machine": "m", "teacher": {"arch": "vgg11", "accuracy": 0.9},
              "student_arch": "s", "budget_seconds": 300.0, "threads": 1, "workers": 2, "seeds": 3,
              "primary_set": SET, "condensed_sets": {SET: {"description": "DM"}, "union": {"description": "U"}}}
    results = summarize(header, core_records())
    write_markdown(tmp_path / "r.md", results)
    write_png(tmp_path / "r.png", results)
    text = (tmp_path / "r.md").read_text(encoding="utf-8")
    assert "81.00 ± 3.61" in text and "62 s (3/3)" in text and "not reached (0/1)" in text
    assert "fast mi >= 70% within 60 s and >= 80% at the budget" in text and "## Ceilings" in text
    legacy = ROOT / "benchmarks" / "results" / "distillation.json"
    if not legacy.is_file() or "condensed_sets" in json.loads(legacy.read_text(encoding="utf-8")):
        pytest.skip("no pre-seeds results file to rewrite")
    shutil.copy(legacy, tmp_path / "old.json")
    assert main(["--report-only", "--out", str(tmp_path / "old")]) == 0
    rewritten = json.loads((tmp_path / "old.json").read_text(encoding="utf-8"))
    assert all(r["seed"] == 0 for r in rewritten["records"])
    assert SET in rewritten["targets"] and "fast" in rewritten["targets"][SET]
