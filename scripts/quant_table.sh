#!/usr/bin/env bash
# The quantization acceptance table (issue 5, section 5): for each model,
# method and format, `marlin quantize` from the GGUF (dequantized as the
# base), then `marlin eval kld` against that GGUF on evaluation text that
# the calibration never saw. Prints one markdown row per run.
#
# Text: data/eval/licenses.txt (Debian license texts, see data/eval/README.md),
# split at its middle byte: calibration = first half, evaluation = second half.
#
# Usage: scripts/quant_table.sh [MODEL...]
# Env: MARLIN (binary, default target/release/marlin), CTX (default 256),
#      CHUNKS (eval windows, default 8), SAMPLES (calibration windows,
#      default 32), SEQ (calibration window, default 256), RUNS (space-separated
#      METHOD:FORMAT:GROUP triples, METHOD one of rtn gptq gptq-act mr-gptq
#      mr-gptq-act awq; default: the full table without mr-gptq-act), OUT (work dir),
#      CALIB_CACHE (calibration statistics shared by the runs, default OUT/calib-cache),
#      OVERRIDES (space-separated RE=FORMAT passed as --override to every run,
#      e.g. 'model\.layers\.\d+\.self_attn\.v_proj=int8'), TAG (appended to the
#      method column of those rows, e.g. +v8),
#      LLAMA_TYPES (llama.cpp types made from the same base after the runs,
#      default Q4_K_M; empty: none), LLAMA_QUANTIZE (default
#      .peer/llama.cpp/build/bin/llama-quantize, built by scripts/peer/build_llamacpp.sh).
#
# The llama.cpp rows: `marlin dequantize` writes the GGUF's dequantized base
# (what marlin's quantizers start from) as an F32 GGUF with the input's
# metadata and tokenizer; llama-quantize makes each type from that file; the
# same `marlin eval kld` scores it. Bits/weight count the same layer linears
# (scripts/gguf_linear_bpw.py). Skipped, with a message, without llama-quantize.
set -euo pipefail
cd "$(dirname "$0")/.."
MARLIN=${MARLIN:-target/release/marlin}
CTX=${CTX:-256}
CHUNKS=${CHUNKS:-8}
SAMPLES=${SAMPLES:-32}
SEQ=${SEQ:-256}
OUT=${OUT:-$(mktemp -d /tmp/marlin-quant-table.XXXXXX)}
mkdir -p "$OUT"
CALIB_CACHE=${CALIB_CACHE:-$OUT/calib-cache}
MODELS=("$@")
if [ ${#MODELS[@]} -eq 0 ]; then
  MODELS=(models/SmolLM2-135M-Instruct.Q4_1.gguf models/gemma-3-270m-q4_k_m.gguf)
fi
DEFAULT_RUNS=""
for m in rtn gptq gptq-act mr-gptq awq; do
  DEFAULT_RUNS+=" $m:int4:128 $m:mxfp4:32 $m:int3:128 $m:int2:64 $m:int8:0"
done
RUNS=${RUNS-$DEFAULT_RUNS}
read -r -a OVERRIDE_LIST <<<"${OVERRIDES:-}"
TAG=${TAG:-}
LLAMA_TYPES=${LLAMA_TYPES-Q4_K_M}
LLAMA_QUANTIZE=${LLAMA_QUANTIZE:-.peer/llama.cpp/build/bin/llama-quantize}

python3 - "$OUT" <<'PY'
import sys
t = open("data/eval/licenses.txt", encoding="utf-8").read()
m = len(t) // 2
open(sys.argv[1] + "/calib.txt", "w", encoding="utf-8").write(t[:m])
open(sys.argv[1] + "/eval.txt", "w", encoding="utf-8").write(t[m:])
PY

# A figure of the last `marlin eval kld` output ($k).
get() { sed -n "s/^$1: \([0-9.]*\).*/\1/p" <<<"$k"; }

echo "| model | method | format | bits/weight | perplexity (base) | mean KLD | 99% KLD | same top-1 | quantize s |"
echo "|---|---|---|---|---|---|---|---|---|"
for model in "${MODELS[@]}"; do
  name=$(basename "$model" .gguf)
  for run in $RUNS; do
    IFS=: read -r method format group <<<"$run"
    # SmolLM2's K = 576 is not a multiple of 128: its groups of 128 become 64.
    if [ "$group" = 128 ] && [[ "$name" == SmolLM2* ]]; then group=64; fi
    args=(--format "$format" --seed 0)
    [ "$group" != 0 ] && args+=(--group-size "$group")
    case $method in
      rtn) args+=(--method rtn) ;;
      gptq) args+=(--method gptq) ;;
      gptq-act) args+=(--method gptq --act-order) ;;
      mr-gptq) args+=(--method mr-gptq) ;;
      mr-gptq-act) args+=(--method mr-gptq --act-order) ;;
      awq) args+=(--method awq) ;;
      *) echo "unknown method $method" >&2; exit 1 ;;
    esac
    for o in ${OVERRIDE_LIST[@]+"${OVERRIDE_LIST[@]}"}; do args+=(--override "$o"); done
    # One calibration pass per model (and one for AWQ, which also keeps
    # activation rows): later runs read the cached statistics, so their
    # "quantize s" leaves out the calibration the first run paid for.
    [ "$method" != rtn ] && args+=(--calib "$OUT/calib.txt" --calib-samples "$SAMPLES" --calib-seq-len "$SEQ" --calib-cache "$CALIB_CACHE")
    dir="$OUT/$name-$method$TAG-$format-g$group"
    rm -rf "$dir"
    t0=$(date +%s.%N)
    if ! q=$("$MARLIN" quantize "$model" -o "$dir" "${args[@]}" 2>"$dir.log"); then
      echo "| $name | $method$TAG | $format g$group | failed: $(tail -1 "$dir.log") |"
      continue
    fi
    t1=$(date +%s.%N)
    bpw=$(sed -n 's/.* at \([0-9.]*\) bits\/weight.*/\1/p' <<<"$q")
    k=$("$MARLIN" eval kld "$dir" --base "$model" --text "$OUT/eval.txt" --ctx "$CTX" --chunks "$CHUNKS" 2>/dev/null)
    printf '| %s | %s | %s g%s | %s | %s (%s) | %s | %s | %s %% | %.0f |\n' \
      "$name" "$method$TAG" "$format" "$group" "$bpw" "$(get 'model perplexity')" \
      "$(get 'base perplexity')" "$(get 'mean KLD')" "$(get '99th percentile KLD')" \
      "$(get 'same top-1')" "$(echo "$t1 - $t0" | bc)"
  done

  [ -z "$LLAMA_TYPES" ] && continue
  if [ ! -x "$LLAMA_QUANTIZE" ]; then
    echo "skipping llama.cpp ($LLAMA_TYPES) for $name: no $LLAMA_QUANTIZE (bash scripts/peer/build_llamacpp.sh builds it)" >&2
    continue
  fi
  base_f32="$OUT/$name-f32.gguf"
  rm -f "$base_f32"
  if ! "$MARLIN" dequantize "$model" -o "$base_f32" >"$base_f32.log" 2>&1; then
    echo "| $name | llama.cpp | base F32 GGUF failed: $(tail -1 "$base_f32.log") |"
    continue
  fi
  for ty in $LLAMA_TYPES; do
    q="$OUT/$name-llama-$ty.gguf"
    t0=$(date +%s.%N)
    if ! "$LLAMA_QUANTIZE" "$base_f32" "$q" "$ty" >"$q.log" 2>&1; then
      echo "| $name | llama.cpp | $ty | failed: $(tail -1 "$q.log") |"
      continue
    fi
    t1=$(date +%s.%N)
    bpw=$(python3 scripts/gguf_linear_bpw.py "$MARLIN" "$q" | sed -n 's/^\([0-9.]*\) bits\/weight.*/\1/p')
    k=$("$MARLIN" eval kld "$q" --base "$model" --text "$OUT/eval.txt" --ctx "$CTX" --chunks "$CHUNKS" 2>/dev/null)
    printf '| %s | llama.cpp | %s | %s | %s (%s) | %s | %s | %s %% | %.0f |\n' \
      "$name" "$ty" "$bpw" "$(get 'model perplexity')" \
      "$(get 'base perplexity')" "$(get 'mean KLD')" "$(get '99th percentile KLD')" \
      "$(get 'same top-1')" "$(echo "$t1 - $t0" | bc)"
  done
  rm -f "$base_f32"
done
