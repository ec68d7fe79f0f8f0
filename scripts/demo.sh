#!/usr/bin/env bash
# Fresh machine to a model answering a prompt on the CPU: fetch the demo
# models (checksummed, cached), build marlin, run the prompt.
set -euo pipefail
cd "$(dirname "$0")/.."
export MARLIN_MODELS="${MARLIN_MODELS:-$PWD/models}"
python3 scripts/fetch_models.py --dest "$MARLIN_MODELS"
cargo build --release -p marlin-cli
prompt="${1:-What is the capital of France? Answer in one sentence.}"
exec target/release/marlin run "$MARLIN_MODELS/SmolLM2-135M-Instruct.Q4_1.gguf" "$prompt" \
  --chat --temperature 0 --max-tokens 64
