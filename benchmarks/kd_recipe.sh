#!/usr/bin/env bash
# KD recipe side by side (issue 10.3): the distillation benchmark's fast:mi* twice at the same time, one job
# each (1 torch thread), with the current defaults and with the 2026-11-22 KD recipe (T 4, no KD augmentation,
# Adam 2e-3, no weight decay), 3 seeds, on DM IPC 10 and on a folder of site payloads (the default job's union).
#   bash benchmarks/kd_recipe.sh UNION_DIR [BUDGET_SECONDS]    # writes benchmarks/results/kd-recipe/
set -euo pipefail
cd "$(dirname "$0")/.."
union=${1:?usage: bash benchmarks/kd_recipe.sh UNION_DIR [BUDGET_SECONDS]}
budget=${2:-600}
out=benchmarks/results/kd-recipe
mkdir -p "$out"
run() {  # name, extra --set arguments
  local name=$1; shift
  .venv/bin/python -m benchmarks.distillation --budget-seconds "$budget" --workers 1 --seeds 3 --quiet \
    --condensed-set "union=$union" --only 'fast:mi*' --work-dir "/tmp/condex-kd-recipe-$name-$budget" \
    --out "$out/$name-${budget}s" "$@"
}
run current > "$out/current-${budget}s.log" 2>&1 &
run old-kd --set distill.temperature=4 --set distill.kd_augment=none --set distill.student_optimizer=adam \
  --set distill.lr_student=0.002 --set distill.weight_decay=0 > "$out/old-kd-${budget}s.log" 2>&1 &
wait
