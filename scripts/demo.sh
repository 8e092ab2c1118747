#!/usr/bin/env bash
# The main job: set up (idempotent), then run the default federated job with `flwr run` on Flower's
# simulation runtime: 10 simulated data sites holding a Dirichlet(0.5) split of Fashion-MNIST condense
# their data (DM, 10 images per class), the server distils a student from the default teacher with
# condensed-guided model inversion, exports it and evaluates it at the sites. Extra arguments are passed
# to `flwr run` (e.g. --run-config "condense.ipc=5").
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
bash scripts/setup.sh

export PATH="$ROOT/.venv/bin:$PATH"
# Flower state (the managed local SuperLink, its database and log) stays inside the checkout.
export FLWR_HOME="$ROOT/.flwr"
# Use this venv; otherwise the SuperLink would `uv sync` the app's dependencies (torch) from PyPI per run.
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1
mkdir -p "$ROOT/outputs"

stop_local_superlink() {
  # flwr starts a detached local SuperLink that outlives `flwr run`; stop ours (matched by its log path).
  pkill -f "flower-superlink .*--log-file $FLWR_HOME/local-superlink" 2>/dev/null || true
}
trap stop_local_superlink EXIT

start=$(date +%s)
# One CPU per simulated site: each condenses with one thread, so two sites condense at a time on 2 cores
# (Flower's default reserves 2 CPUs per ClientApp, which runs the 10 sites one after another).
flwr run . --stream --federation-config "num-supernodes=10 client-resources-num-cpus=1" \
  --run-config "output-dir='$ROOT/outputs' teacher.checkpoint='$ROOT/assets/teachers/fashion_mnist'" "$@"

report=$(ls -td "$ROOT"/outputs/federated-*/ 2>/dev/null | head -n 1)
if [ -z "$report" ] || [ ! -f "$report/report.json" ]; then
  echo "the federated job wrote no report; see $FLWR_HOME/local-superlink/superlink.log" >&2
  exit 1
fi
echo
cat "$report/report.md"
echo
echo "report:  $report/report.json"
echo "student: $report/student"
echo "wall time: $(( $(date +%s) - start )) s"
"$ROOT/.venv/bin/python" -c "import json,sys; r=json.load(open(sys.argv[1])); sys.exit(0 if r.get('status')=='completed' else 1)" \
  "$report/report.json"
