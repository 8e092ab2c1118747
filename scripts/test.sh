#!/usr/bin/env bash
# The test command: set up (idempotent), lint, then run the whole test suite on CPU.
# Fails on any failing test and when no test is collected (pytest exit code 5).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export CONDEX_QUIET=1 CUDA_VISIBLE_DEVICES=""
.venv/bin/ruff check .
set +e
.venv/bin/python -m pytest -q -p no:cacheprovider --durations=15 "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
  echo "pytest collected no tests: failing on purpose" >&2
  exit 1
fi
exit "$status"
