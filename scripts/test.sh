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
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed;?$/) p += $(i-1); if ($i ~ /^failed;?$/) f += $(i-1); if ($i ~ /^ignored;?$/) s += $(i-1) } }
     END { printf "tests: %d passed, %d failed, %d skipped\n", p, f, s }' "$log"
exit "$status"
