#!/usr/bin/env bash
# marlin vs llama.cpp on this machine's CPU, both measured in the same run:
#   speed       llama-bench -p 512 -n 128   vs  marlin bench model --pp 512 --tg 128
#   perplexity  llama-perplexity -c 512     vs  marlin eval ppl --ctx 512 (same chunks)
#   greedy text llama-completion --temp 0 -n 32  vs  marlin run --temperature 0 --max-tokens 32
# Raw outputs go to .peer/runs/<UTC time>/; the tables are printed at the end
# by scripts/peer/summarize.py (run it again on a run folder to reprint).
#
# Environment:
#   MARLIN_MODELS  folder with the two demo models (default: models/)
#   THREADS        threads for both engines (default 2)
#   QUALITY_THREADS threads for the perplexity and greedy-text runs (default
#                  THREADS; results do not depend on it, only the run time:
#                  on a heavily shared machine ggml's spinning thread pool is
#                  far slower with 2 threads than with 1)
#   MARLIN_BIN     marlin binary to use (default: target/release/marlin,
#                  built first with cargo; set it to skip that build)
#   LCP_BIN        folder with the llama.cpp binaries (default: the one
#                  build_llamacpp.sh builds; set it to skip that build, e.g.
#                  LCP_BIN=.peer/llama.cpp/build-portable/bin)
#   CHUNKS         perplexity windows of 512 tokens (default 8)
#   REPS           benchmark repetitions for both engines (default 5, llama-bench's default)
#   ONLY           run only the sections named, comma-separated: speed,ppl,gen
#
# A failing marlin command is recorded (exit code + stderr in the run folder)
# and the script goes on, so the llama.cpp side is always measured.
set -uo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$repo_root"
models_dir="${MARLIN_MODELS:-$repo_root/models}"
threads="${THREADS:-2}"
quality_threads="${QUALITY_THREADS:-$threads}"
chunks="${CHUNKS:-8}"
reps="${REPS:-5}"
only="${ONLY:-speed,ppl,gen}"
n_gen=32
ctx=512
text="data/eval/licenses.txt"
models=(SmolLM2-135M-Instruct.Q4_1.gguf gemma-3-270m-q4_k_m.gguf)
prompts=(
    "The capital of France is"
    "def fibonacci(n):"
    "Once upon a time, in a small village by the sea,"
)

lcp_bin="${LCP_BIN:-$repo_root/.peer/llama.cpp/build/bin}"
marlin="${MARLIN_BIN:-$repo_root/target/release/marlin}"

section() { [[ ",$only," == *",$1,"* ]]; }

if [[ -z "${LCP_BIN:-}" ]]; then
    scripts/peer/build_llamacpp.sh || { echo "error: llama.cpp build failed" >&2; exit 1; }
fi
needed=()
section speed && needed+=(llama-bench)
section ppl && needed+=(llama-tokenize llama-perplexity)
section gen && needed+=(llama-completion)
for tool in "${needed[@]}"; do
    [[ -x "$lcp_bin/$tool" ]] || { echo "error: $lcp_bin/$tool missing" >&2; exit 1; }
done
if [[ -z "${MARLIN_BIN:-}" ]] && ! cargo build --release -p marlin-cli; then
    echo "warning: marlin build failed; only llama.cpp is measured" >&2
fi

run_dir="$repo_root/.peer/runs/$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$run_dir"
# Machine and versions, for the record.
{
    echo "date_utc: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
    echo "cores: $(nproc)"
    echo "threads: $threads (speed), $quality_threads (perplexity, greedy text)"
    echo "llama_cpp_bin: ${lcp_bin#"$repo_root"/}"
    echo "chunks: $chunks"
    echo "reps: $reps"
    echo "marlin_bin: ${marlin#"$repo_root"/} ($(date -u -r "$marlin" +%H:%MZ 2>/dev/null))"
    echo "marlin_commit: $(git rev-parse --short HEAD 2>/dev/null)$(git diff --quiet HEAD -- crates 2>/dev/null || echo '+dirty')"
    echo "llama_cpp: vendored in the llama-cpp-python ${LCP_VERSION:-0.3.36} sdist"
    echo "load_at_start: $(cut -d' ' -f1-3 /proc/loadavg)"
} > "$run_dir/machine.txt"

# run NAME CMD...: stdout -> NAME.out, stderr -> NAME.err, exit code -> NAME.rc
run() {
    local name="$1"
    shift
    echo "+ $*" | tee "$run_dir/$name.cmd" >&2
    "$@" > "$run_dir/$name.out" 2> "$run_dir/$name.err"
    local rc=$?
    echo "$rc" > "$run_dir/$name.rc"
    [[ $rc == 0 ]] || echo "  (exit $rc; see $run_dir/$name.err)" >&2
}

for model_file in "${models[@]}"; do
    model="$models_dir/$model_file"
    tag="${model_file%%.gguf}"
    if [[ ! -f "$model" ]]; then
        echo "warning: $model missing (scripts/fetch_models.py fetches it); skipped" >&2
        continue
    fi
    echo "== $model_file" >&2
    if section speed; then
        run "$tag.lcp.bench" "$lcp_bin/llama-bench" -m "$model" -t "$threads" \
            -p 512 -n 128 -r "$reps" -o json
        run "$tag.marlin.bench" "$marlin" bench model "$model" --pp 512 --tg 128 \
            --reps "$reps" --threads "$threads"
    fi
    if section ppl; then
        run "$tag.lcp.tokens" "$lcp_bin/llama-tokenize" -m "$model" -f "$text" \
            --ids --log-disable --no-escape
        run "$tag.lcp.ppl" "$lcp_bin/llama-perplexity" -m "$model" -f "$text" \
            -c "$ctx" -t "$quality_threads" --chunks "$chunks"
        run "$tag.marlin.ppl" "$marlin" eval ppl "$model" --text "$text" \
            --ctx "$ctx" --chunks "$chunks" --threads "$quality_threads"
    fi
    if section gen; then
        for i in "${!prompts[@]}"; do
            printf '%s' "${prompts[$i]}" > "$run_dir/prompt$i.txt"
            run "$tag.lcp.gen$i" "$lcp_bin/llama-completion" -m "$model" \
                -t "$quality_threads" --temp 0 -n "$n_gen" -no-cnv --no-display-prompt \
                -p "${prompts[$i]}" < /dev/null
            run "$tag.marlin.gen$i" "$marlin" run "$model" "${prompts[$i]}" \
                --temperature 0 --max-tokens "$n_gen" --threads "$quality_threads"
        done
    fi
done

echo "load_at_end: $(cut -d' ' -f1-3 /proc/loadavg)" >> "$run_dir/machine.txt"
echo "raw outputs: $run_dir" >&2
python3 scripts/peer/summarize.py "$run_dir"
