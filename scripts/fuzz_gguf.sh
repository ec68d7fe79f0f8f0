#!/usr/bin/env bash
# Fuzzes the GGUF parser (and the safetensors parser) for a bounded time.
#
#   scripts/fuzz_gguf.sh [SECONDS] [TARGET]
#
# SECONDS defaults to 60 and TARGET to gguf_parse (also: safetensors_parse).
# Installs cargo-fuzz if missing. cargo-fuzz needs nightly-only rustc flags
# (-Zsanitizer): a nightly toolchain is used when rustup has one, else the
# stable compiler with RUSTC_BOOTSTRAP=1. The corpus grows in
# fuzz/corpus/TARGET (git-ignored), seeded from fuzz/seeds/TARGET; crashes
# land in fuzz/artifacts/TARGET and make this script exit non-zero.
set -euo pipefail

seconds="${1:-60}"
target="${2:-gguf_parse}"
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root/fuzz"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz ..." >&2
    cargo install cargo-fuzz --locked
fi

toolchain=()
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    toolchain=(+nightly)
else
    export RUSTC_BOOTSTRAP=1
fi

corpus="corpus/$target"
mkdir -p "$corpus"
if [ -d "seeds/$target" ]; then
    cp -n seeds/"$target"/* "$corpus"/ 2>/dev/null || true
fi

# -rss_limit_mb bounds memory: an allocation sized by an unchecked count in
# the file shows up as a crash, not as a slow machine.
cargo "${toolchain[@]}" fuzz run "$target" "$corpus" -- \
    -max_total_time="$seconds" -max_len=65536 -rss_limit_mb=2048 -print_final_stats=1
