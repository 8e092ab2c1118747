#!/usr/bin/env bash
# Cached KD views side by side (issue 10.3): the distillation benchmark twice at the same time, one job each
# (1 torch thread): the defaults (a fresh crop/flip view per KD step, labelled by the teacher then) against
# distill.kd_views=K (each pool image stored with K-1 crop/flip views, labelled once when it enters the pool),
# for data-free fast:mi and guided fast:mi*, 3 seeds, on one DM IPC 10 payload file (both sides read the same).
#   bash benchmarks/kd_views.sh DM_FILE [BUDGET_SECONDS] [K]    # writes benchmarks/results/kd-views/
set -euo pipefail
cd "$(dirname "$0")/.."
dm=${1:?usage: bash benchmarks/kd_views.sh DM_FILE [BUDGET_SECONDS] [K]}
budget=${2:-600}
views=${3:-4}
out=benchmarks/results/kd-views
mkdir -p "$out"
run() {  # name, extra --set arguments
  local name=$1; shift
  .venv/bin/python -m benchmarks.distillation --budget-seconds "$budget" --workers 1 --seeds 3 --quiet \
    --condensed "$dm" --condensed-name dm-ipc10 --only fast:mi 'fast:mi*' \
    --work-dir "/tmp/condex-kd-views-$name-$budget" --out "$out/$name-${budget}s" "$@"
}
run fresh-views > "$out/fresh-views-${budget}s.log" 2>&1 &
run "cached-views-$views" --set "distill.kd_views=$views" > "$out/cached-views-$views-${budget}s.log" 2>&1 &
wait
