#!/usr/bin/env bash
# The test command: fetches the demo models (cached, checksummed), then runs
# every test of the workspace in release mode (the real-model tests are
# compute-heavy), and ends with one summary line over all test binaries.
set -euo pipefail
cd "$(dirname "$0")/.."
export MARLIN_MODELS="${MARLIN_MODELS:-$PWD/models}"
python3 scripts/fetch_models.py --dest "$MARLIN_MODELS"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace --release "$@" 2>&1 | tee "$log" || status=$?
if [ "$#" -eq 0 ]; then
  # The CUDA backend's host-side unit tests (plans, entry tables against the
  # kernel sources, shared-memory budgets, scale rules): behind the `cuda`
  # feature, and they need no GPU.
  cargo test --release -p marlin-cuda --features cuda --lib 2>&1 | tee -a "$log" || status=$?
fi
# The OpenAI-client integration tests of `marlin serve` (scripts/server/):
# a real server on loopback, the official `openai` package as the client.
if [ "$#" -eq 0 ]; then
  if python3 -c "import openai" 2>/dev/null; then
    cargo build --release -p marlin-cli 2>&1 | tail -1
    python3 scripts/server/test_server.py --marlin target/release/marlin 2>&1 | tee -a "$log" || status=1
  else
    echo "server tests: 0 passed, 0 failed, 1 skipped (python package openai missing; .ci/run installs it)" | tee -a "$log"
  fi
  # The GPU machine's decode-step timeline analysis (scripts/ktrace/), on a
  # synthetic trace: it runs only there otherwise.
  if python3 scripts/ktrace/ktrace.py --self-test; then
    echo "script tests: 1 passed, 0 failed, 0 skipped (ktrace self-test)" >> "$log"
  else
    echo "script tests: 0 passed, 1 failed, 0 skipped (ktrace self-test)" >> "$log"
    status=1
  fi
fi
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed;?$/) p += $(i-1); if ($i ~ /^failed;?$/) f += $(i-1); if ($i ~ /^ignored;?$/) s += $(i-1) } }
     /^(server|script) tests:/ { p += $3; f += $5; if ($7 ~ /^[0-9]+$/) s += $7 }
     END { printf "tests: %d passed, %d failed, %d skipped\n", p, f, s }' "$log"
exit "$status"
