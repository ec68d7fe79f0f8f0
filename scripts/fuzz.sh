#!/usr/bin/env bash
# cargo-fuzz targets over marlin's parsers of untrusted input (fuzz/fuzz_targets).
#
#   scripts/fuzz.sh ci                      # what .ci/run runs: every target, fixed budget
#   scripts/fuzz.sh explore TARGET SECONDS  # long run, random seed, corpus kept
#   scripts/fuzz.sh list                    # the targets
#
# `ci` is reproducible: each target starts from its seeds only (fuzz/seeds/TARGET,
# which holds the regression input of every crash found so far), with a fixed
# libFuzzer -seed, a fixed -max_len and a fixed number of -runs, so a pass here
# predicts a pass in CI (same binary, same inputs, same order). The budgets
# (CI_RUNS below) keep the step to a few minutes on 2 cores.
#
# `explore` is for finding new bugs: a random seed, the corpus growing in
# fuzz/corpus/TARGET (git-ignored), crashes in fuzz/artifacts/TARGET. Copy a crash
# input into fuzz/seeds/TARGET once it is fixed, with a regression test in
# crates/marlin-io/tests (or the crate of the code that crashed).
#
# Both modes exit non-zero on a crash, an over-limit allocation (-rss_limit_mb),
# or an input that runs longer than -timeout seconds.
#
# cargo-fuzz needs nightly-only rustc flags (-Zsanitizer): a nightly toolchain is
# used when rustup has one, else the stable compiler with RUSTC_BOOTSTRAP=1.
# cargo-fuzz is installed if missing.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root/fuzz"

# Executions per target in CI mode, each about 10-20 s on one unloaded core
# (exec/s of the ASan builds: docs/FUZZING.md).
declare -A CI_RUNS=(
    [gguf_parse]=300000
    [safetensors_parse]=300000
    [server_request]=200000
    [tokenizer_spec]=10000
    [tokenizer_json]=5000
    [chat_template]=5000
    [checkpoint_import]=10000
)
# Longest input generated (the largest seed, a tiny model directory, is 6 kB).
MAX_LEN=65536
CI_SEED=20261122
# A template looping until minijinja's fuel (10M instructions) runs out takes
# about 1 min under ASan on a loaded core: an input slower than this is a hang.
TIMEOUT_S=120
RSS_LIMIT_MB=2048

targets() { sed -n 's/^name = "\([a-z_]*\)"$/\1/p' Cargo.toml | grep -v '^marlin-fuzz$'; }

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

# The fuzz binaries, built once by `cargo fuzz build` (which every mode runs
# first, unless FUZZ_SKIP_BUILD=1 reuses the last build) and run directly, so
# that all targets of one run are the same build.
bin_dir="target/$(rustc -vV | sed -n 's/^host: //p')/release"
build() {
    if [ "${FUZZ_SKIP_BUILD:-0}" != 1 ]; then
        cargo "${toolchain[@]}" fuzz build
    fi
}

# run TARGET CORPUS_DIR LIBFUZZER_ARGS...: seeds are read from fuzz/seeds/TARGET,
# new inputs written to CORPUS_DIR, crashes to fuzz/artifacts/TARGET.
run() {
    local target="$1" corpus="$2"
    shift 2
    local seeds=()
    if [ -d "seeds/$target" ]; then
        seeds=("seeds/$target")
    fi
    mkdir -p "$corpus" "artifacts/$target"
    ASAN_OPTIONS="${ASAN_OPTIONS:-detect_odr_violation=0}" "$bin_dir/$target" \
        -artifact_prefix="artifacts/$target/" \
        -max_len="$MAX_LEN" -rss_limit_mb="$RSS_LIMIT_MB" \
        -timeout="$TIMEOUT_S" -print_final_stats=1 "$@" "$corpus" "${seeds[@]}"
}

mode="${1:-ci}"
case "$mode" in
list)
    targets
    ;;
ci)
    build
    for target in $(targets); do
        runs="${CI_RUNS[$target]:?no CI budget for fuzz target $target in scripts/fuzz.sh}"
        corpus="$(mktemp -d)"
        echo "=== fuzz $target: $runs runs, seed $CI_SEED"
        start=$(date +%s)
        status=0
        run "$target" "$corpus" -seed="$CI_SEED" -runs="$runs" || status=$?
        rm -rf "$corpus"
        echo "=== fuzz $target: $(( $(date +%s) - start )) s, exit $status"
        [ "$status" -eq 0 ] || exit "$status"
    done
    ;;
explore)
    target="${2:?usage: scripts/fuzz.sh explore TARGET SECONDS}"
    seconds="${3:?usage: scripts/fuzz.sh explore TARGET SECONDS}"
    build
    run "$target" "corpus/$target" -max_total_time="$seconds"
    ;;
*)
    echo "usage: scripts/fuzz.sh ci | explore TARGET SECONDS | list" >&2
    exit 2
    ;;
esac
