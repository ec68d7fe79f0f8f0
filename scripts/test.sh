#!/usr/bin/env bash
# The test command: fetches the demo models (cached, checksummed), then runs
# every test of the workspace in release mode (the real-model tests are
# compute-heavy).
set -euo pipefail
cd "$(dirname "$0")/.."
export MARLIN_MODELS="${MARLIN_MODELS:-$PWD/models}"
python3 scripts/fetch_models.py --dest "$MARLIN_MODELS"
cargo test --workspace --release "$@"
