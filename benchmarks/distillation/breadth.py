"""The engine-breadth cases of the distillation benchmark (issue 6), on the same FMNIST-CPU setting, teacher,
condensed set and per-case budget as the core cases:

* ``cmi`` in modes ``mi``, ``mi+cs``, ``mi*`` (its ``cs-only`` is the core ``none:cs-only`` record: that mode
  synthesises nothing, so it does not depend on the base method);
* ``replay=generative`` with ``fast`` in ``mi`` and ``mi*``, at the budget and at twice the budget (the
  constant-memory target compares the two peak memories);
* ``sampler=ssd`` on ``fast`` ``mi*`` limited to 1/4 of the synthetic samples the core uniform ``fast:mi*``
  run made (``synthetic_budget`` = ``pool_cap`` = that quarter: synthesis stops there, every sample is kept
  and the rest of the budget is KD), plus the uniform sampler under the same limit (separates "fewer
  samples" from "SSD");
* the same pair with ``pool_every=4`` instead: the generator trains every epoch as usual but only every
  4th synthetic batch enters the pool, so KD sees a quarter of the samples, spread over the run (the
  ``synthetic=1/4`` cases take theirs from the first, immature quarter of the generator's training);
* ``kd_loss=kl_logit_std`` on ``fast`` ``mi*`` (base temperature 2 for z-scored logits).

Every case runs ``benchmarks/distillation/cases.py`` in its own process (``plan.run_cases``), so its peak
memory is its own, and its record carries ``case``, ``replay``, ``sampling``, ``kd_loss``,
``pool_samples_at_end`` and ``peak_memory_mb``. ``python -m benchmarks.distillation --breadth`` runs them
with every seed on the primary condensed set, after the core cases; ``breadth_targets`` evaluates the
issue's targets on the means over seeds."""

from __future__ import annotations

from typing import Any

from benchmarks.distillation.plan import CORE_FAST_STAR, Case
from benchmarks.distillation.stats import mean_of


def breadth_cases() -> list[Case]:
    """The issue-6 cases, in the order they run."""
    generative = {"distill.replay": "generative", "distill.kd_views": "0"}  # views are cached in the pool only
    cases = [Case(f"cmi:{mode}", f"cmi:{mode}") for mode in ("mi", "mi+cs", "mi*")]
    for factor in (1.0, 2.0):
        suffix = "" if factor == 1.0 else ",budget=x2"
        cases += [Case(f"fast:{mode}@replay=generative{suffix}", f"fast:{mode}", generative, factor)
                  for mode in ("mi", "mi*")]
    cases += [
        Case("fast:mi*@sampler=ssd,synthetic=1/4", CORE_FAST_STAR, {"distill.sampler": "ssd"}, quarter_synthetic=True),
        Case("fast:mi*@sampler=uniform,synthetic=1/4", CORE_FAST_STAR, {}, quarter_synthetic=True),
        Case("fast:mi*@sampler=ssd,pool_every=4", CORE_FAST_STAR,
             {"distill.sampler": "ssd", "distill.pool_every": "4"}),
        Case("fast:mi*@sampler=uniform,pool_every=4", CORE_FAST_STAR, {"distill.pool_every": "4"}),
        Case("fast:mi*@kd_loss=kl_logit_std", CORE_FAST_STAR,
             {"distill.kd_loss": "kl_logit_std", "distill.temperature": "2.0"}),
    ]
    return cases


def breadth_targets(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue-6 targets on the means over seeds, from whichever of the needed records exist (pass the
    records of one condensed set: the primary one, which the breadth cases run on)."""
    by_case: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        by_case.setdefault(r.get("case", ""), []).append(r)
    acc = {name: a for name, rs in by_case.items() if (a := mean_of(rs, "student_accuracy")) is not None}
    memory = {name: m for name, rs in by_case.items() if (m := mean_of(rs, "peak_memory_mb"))}
    targets: dict[str, Any] = {}
    if "cmi:mi*" in acc and "cmi:mi+cs" in acc:
        gain = 100 * (acc["cmi:mi*"] - acc["cmi:mi+cs"])
        targets["cmi"] = {"gain_over_mi+cs_points": gain, "met": gain >= 2.0}
    for mode in ("mi", "mi*"):
        short, long = f"fast:{mode}@replay=generative", f"fast:{mode}@replay=generative,budget=x2"
        if short in memory and long in memory:
            ratio = memory[long] / memory[short]
            entry: dict[str, Any] = {"peak_memory_ratio_x2": ratio, "memory_met": ratio <= 1.10}
            if short in acc and f"fast:{mode}" in acc:
                entry["accuracy_vs_pool_points"] = 100 * (acc[short] - acc[f"fast:{mode}"])
                entry["accuracy_met"] = abs(entry["accuracy_vs_pool_points"]) <= 1.0
            targets[f"generative_{mode}"] = entry
    ssd, uniform = "fast:mi*@sampler=ssd,synthetic=1/4", CORE_FAST_STAR
    if ssd in acc and uniform in acc:
        delta = 100 * (acc[ssd] - acc[uniform])
        targets["ssd"] = {"vs_uniform_full_pool_points": delta, "met": delta >= -0.5,
                          "synthetic_budget": by_case[ssd][0].get("synthetic_budget")}
        if "fast:mi*@sampler=uniform,synthetic=1/4" in acc:
            same = acc["fast:mi*@sampler=uniform,synthetic=1/4"]
            targets["ssd"]["vs_uniform_same_budget_points"] = 100 * (acc[ssd] - same)
    spread, spread_uniform = "fast:mi*@sampler=ssd,pool_every=4", "fast:mi*@sampler=uniform,pool_every=4"
    if spread in acc and uniform in acc:
        delta = 100 * (acc[spread] - acc[uniform])
        targets["ssd_pool_every_4"] = {"vs_uniform_full_pool_points": delta, "met": delta >= -0.5}
        if spread_uniform in acc:
            targets["ssd_pool_every_4"]["vs_uniform_same_pool_points"] = 100 * (acc[spread] - acc[spread_uniform])
    if "fast:mi*@kd_loss=kl_logit_std" in acc and uniform in acc:
        targets["kl_logit_std"] = {"vs_kl_points": 100 * (acc["fast:mi*@kd_loss=kl_logit_std"] - acc[uniform])}
    return targets
