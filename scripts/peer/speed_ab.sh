#!/usr/bin/env bash
# marlin vs llama.cpp speed, side by side, alternating the two engines in
# rounds so that both see the same moments of a shared machine:
#   round i, model M: llama-bench -m M -t T -p 512 -n 128 -r 1, then
#                     marlin bench model M --pp 512 --tg 128 --reps 1 --threads T
# Prints every round, then per model the median of the rounds and the
# ratio marlin / llama.cpp, with the load average before and after.
#
# Environment:
#   ROUNDS      rounds per model (default 3)
#   THREADS     threads for both engines (default 2)
#   MARLIN_BIN  marlin binary (default target/release/marlin; not rebuilt)
#   LCP_BIN     llama.cpp binaries (default .peer/llama.cpp/build/bin, from
#               scripts/peer/build_llamacpp.sh)
#   MODELS      space-separated GGUF paths (default: the two demo models)
#   LCP_ARGS    extra llama-bench arguments (default none). If llama-bench
#               fails with them, the script retries with --repack 0 and
#               keeps it: the native build's AMX path (repacked weights)
#               crashes on the AMX-capable Xeon VM of 2026-11-22.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$repo_root"
rounds="${ROUNDS:-3}"
threads="${THREADS:-2}"
marlin="${MARLIN_BIN:-target/release/marlin}"
lcp="${LCP_BIN:-.peer/llama.cpp/build/bin}/llama-bench"
models="${MODELS:-models/SmolLM2-135M-Instruct.Q4_1.gguf models/gemma-3-270m-q4_k_m.gguf}"
for tool in "$marlin" "$lcp"; do
    [[ -x "$tool" ]] || { echo "error: $tool missing (build it first)" >&2; exit 1; }
done

lcp_args=(${LCP_ARGS:-})
out="$(mktemp)"
trap 'rm -f "$out"' EXIT
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
for ((i = 1; i <= rounds; i++)); do
    for model in $models; do
        # llama-bench json: one object per test, avg_ts = tokens/s.
        if ! lcp_json="$("$lcp" -m "$model" -t "$threads" -p 512 -n 128 -r 1 -o json "${lcp_args[@]}" 2>/dev/null)"; then
            echo "llama-bench failed with args '${lcp_args[*]}': retrying with --repack 0" >&2
            lcp_args+=(--repack 0)
            lcp_json="$("$lcp" -m "$model" -t "$threads" -p 512 -n 128 -r 1 -o json "${lcp_args[@]}" 2>/dev/null)"
        fi
        lcp_pp="$(python3 -c 'import json,sys; d=json.load(sys.stdin); print(next(t["avg_ts"] for t in d if t["n_prompt"]>0))' <<<"$lcp_json")"
        lcp_tg="$(python3 -c 'import json,sys; d=json.load(sys.stdin); print(next(t["avg_ts"] for t in d if t["n_gen"]>0))' <<<"$lcp_json")"
        m_out="$("$marlin" bench model "$model" --pp 512 --tg 128 --reps 1 --threads "$threads")"
        m_pp="$(awk '$1=="pp512"{print $3}' <<<"$m_out")"
        m_tg="$(awk '$1=="tg128"{print $3}' <<<"$m_out")"
        printf '%s %s %s %s %s %s\n' "$i" "$(basename "$model" .gguf)" "$lcp_pp" "$m_pp" "$lcp_tg" "$m_tg" | tee -a "$out"
    done
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "llama-bench extra args: ${lcp_args[*]:-none}"
python3 - "$out" <<'EOF'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
print(f"\n{'model':<34} {'test':<6} {'llama.cpp':>10} {'marlin':>10} {'marlin/lcp':>10}   (tok/s, median of rounds)")
for model in dict.fromkeys(r[1] for r in rows):
    rs = [r for r in rows if r[1] == model]
    for test, a, b in (("pp512", 2, 3), ("tg128", 4, 5)):
        lcp = statistics.median(float(r[a]) for r in rs)
        mar = statistics.median(float(r[b]) for r in rs)
        print(f"{model:<34} {test:<6} {lcp:>10.1f} {mar:>10.1f} {mar / lcp:>10.2f}")
EOF
