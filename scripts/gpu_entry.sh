#!/usr/bin/env bash
# The one entry point run ON the GPU machine (no Rust, no network): runs every
# staged GPU test and benchmark from .gpu-stage/ (built by scripts/gpu.sh) and
# prints a short summary table last. Full logs go to $OUT (or /tmp/marlin-gpu).
#
#   MARLIN_BENCH_ARGS="..."   extra arguments for the main marlin-cuda-bench run
#   MARLIN_BENCH_SWEEP=1      also time every split-K factor (tuning table)
#   MARLIN_BENCH_SWEEP_ARGS   extra arguments of the sweep run (e.g. "--ms 1,16")
#   MARLIN_NCU="--shape NxK --ms 1"  Nsight Compute profile of one decode launch
#   MARLIN_TESTS=0            skip the staged test binaries
#   MARLIN_TESTS=a,b          run only these (gpu_int4,gpu_ops: names without -test)
#   MARLIN_TEST_KNOB_VARIANTS=0  skip gpu_int4's reruns with MARLIN_INT4_DEC_QUAD=0 plus
#                             DEC_LEAN=1 or PAIR=0, and QUAD=chains8 (loops the defaults skip)
#                             and gpu_int4's shared-activation test with MARLIN_INT4_SA_NBW=2
#                             and gpu_ops' attention tests with MARLIN_CUDA_ATTN_CLUSTER=1
#                             and gpu_int4_glu's with MARLIN_INT4_GLU_STAGES=8
#                             and gpu_int4_wgmma_ws' split-K test with
#                             MARLIN_WGMMA_WS_OLD_EPILOGUE=1
#                             and gpu_decoder's model checks with MARLIN_CUDA_NORM_VEC=0
#   MARLIN_BENCH_GEMM=0       skip the GEMM benchmark
#   MARLIN_ATTN_PEER=0        skip PyTorch's attention peers (scripts/gpu_attn_peer.py)
#   MARLIN_BENCH_DECODE=0     skip `marlin bench decode` (Llama-3.1-8B-shaped INT4)
#   MARLIN_BENCH_DECODE_ARGS  its arguments (default: --batch 1,8,32 --ctx 512)
#   MARLIN_BENCH_DECODE_GLU_AB=1  also the decode bench at batch 1, 4 with the GLU
#                             epilogue at every M (8- / 16-stage ring) vs GEMM + glu
#   MARLIN_BENCH_DECODE_SK=1  also the decode bench at batch 1 with the opt-in
#                             stream-K INT4 kernel (MARLIN_INT4_STREAMK=1)
#   MARLIN_KTRACE=1           the decode step's kernel timeline through CUPTI
#                             (scripts/gpu_ktrace.sh; MARLIN_KTRACE_BATCHES="1 8")
#   MARLIN_MODELS_DIR         real models for the end-to-end step (default
#                             /tmp/marlin-models, filled by scripts/gpu_ship_models.sh);
#                             the step runs when the models are there
set -uo pipefail
cd "$(dirname "$0")/.."
stage="${MARLIN_STAGE:-.gpu-stage}"
out="${OUT:-/tmp/marlin-gpu}"
mkdir -p "$out"
export MARLIN_KERNEL_CACHE="${MARLIN_KERNEL_CACHE:-/tmp/marlin-kernel-cache}"
# A kernel cache compiled ahead by scripts/gpu.sh (MARLIN_PREWARM_KERNELS=1):
# modules found there load without an NVRTC compile on this machine.
mkdir -p "$MARLIN_KERNEL_CACHE"
kc_before=$(ls "$MARLIN_KERNEL_CACHE" | wc -l)
if [ -f "$stage/kernel-cache.tar.xz" ]; then
    python3 -c 'import sys, tarfile; t = tarfile.open(sys.argv[1]); t.extractall(sys.argv[2], **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))' \
        "$stage/kernel-cache.tar.xz" "$MARLIN_KERNEL_CACHE"
fi
kc_warm=$(ls "$MARLIN_KERNEL_CACHE" | wc -l)

# libnvrtc / libcublas: the CUDA toolkit, else pip's nvidia wheels.
libdirs=""
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib \
         $(python3 -c 'import glob,site; print(" ".join(d for p in site.getsitepackages() for d in glob.glob(p + "/nvidia/*/lib")))' 2>/dev/null); do
    [ -d "$d" ] && libdirs="$libdirs:$d"
done
export LD_LIBRARY_PATH="${libdirs#:}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv 2>&1 | tee "$out/nvidia-smi.txt"

summary=()
step() {  # step NAME LOGFILE CMD...
    local name=$1 log=$2; shift 2
    local t0=$(date +%s.%N)
    "$@" > "$log" 2>&1
    local rc=$?
    local dt=$(python3 -c "print(f'{$(date +%s.%N) - $t0:.1f}')")
    local status=PASS; [ $rc -ne 0 ] && status="FAIL(rc=$rc)"
    summary+=("$(printf '%-28s %-12s %6ss  %s' "$name" "$status" "$dt" "$log")")
    echo "== $name: $status in ${dt}s (log $log)"
    grep -E "^(PASS|FAIL)|panicked|error|test result" "$log" | head -40
}

if [ "${MARLIN_TESTS:-1}" != 0 ]; then
    for t in "$stage"/tests/*; do
        [ -x "$t" ] || continue
        name=$(basename "$t")
        # MARLIN_TESTS=a,b: only the test binaries a-test, b-test (names
        # without the -test suffix); 1 or unset: all of them.
        if [ "${MARLIN_TESTS:-1}" != 1 ] && ! [[ ",${MARLIN_TESTS}," == *",${name%-test},"* ]]; then
            continue
        fi
        step "test $name" "$out/test_$name.log" "$t" --include-ignored --test-threads=1 --nocapture
        # The INT4 decode loops the defaults do not take (the quad loop is
        # the default at M <= 16 since change 54; the lean, paired and
        # single-chunk loops it replaced) stay reachable through their
        # knobs: test them too (MARLIN_TEST_KNOB_VARIANTS=0 skips these
        # extra runs, ~50 s each).
        if [ "$name" = gpu_int4-test ] && [ "${MARLIN_TEST_KNOB_VARIANTS:-1}" != 0 ]; then
            step "test $name (QUAD=0 DEC_LEAN=1)" "$out/test_${name}_lean1.log" \
                env MARLIN_INT4_DEC_QUAD=0 MARLIN_INT4_DEC_LEAN=1 "$t" --include-ignored --test-threads=1 --nocapture
            step "test $name (QUAD=0 PAIR=0)" "$out/test_${name}_pair0.log" \
                env MARLIN_INT4_DEC_QUAD=0 MARLIN_INT4_PAIR=0 "$t" --include-ignored --test-threads=1 --nocapture
            step "test $name (QUAD=chains8)" "$out/test_${name}_chains8.log" \
                env MARLIN_INT4_DEC_QUAD=chains8 "$t" --include-ignored --test-threads=1 --nocapture
        fi
        # The opt-in shared-activation INT4 kernel with two n16 blocks per
        # warp (the default is one; docs/CUDA.md change 77).
        if [ "$name" = gpu_int4-test ] && [ "${MARLIN_TEST_KNOB_VARIANTS:-1}" != 0 ]; then
            step "test $name (SA_NBW=2)" "$out/test_${name}_sa2.log" \
                env MARLIN_INT4_SA_NBW=2 "$t" --include-ignored --test-threads=1 --nocapture shared_a
        fi
        # The opt-in cluster merge of decode attention (docs/CUDA.md change 42).
        if [ "$name" = gpu_ops-test ] && [ "${MARLIN_TEST_KNOB_VARIANTS:-1}" != 0 ]; then
            step "test $name (ATTN_CLUSTER=1)" "$out/test_${name}_cluster.log" \
                env MARLIN_CUDA_ATTN_CLUSTER=1 "$t" --test-threads=1 --nocapture attention
        fi
        # The residual + norm's scalar form (the default before docs/CUDA.md
        # change 44's A/B; also the fallback of rows the vector form refuses)
        # through the real models (Gemma's post-norms; they skip when the
        # models are not shipped) and the tiny Qwen3 check.
        if [ "$name" = gpu_decoder-test ] && [ "${MARLIN_TEST_KNOB_VARIANTS:-1}" != 0 ]; then
            step "test $name (NORM_VEC=0)" "$out/test_${name}_normscalar.log" \
                env MARLIN_CUDA_NORM_VEC=0 "$t" --test-threads=1 --nocapture tiny_qwen3 _on_gpu_matches_transformers
        fi
        # The GLU-epilogue GEMM with the 8-stage ring at M <= 4 (not the default).
        if [ "$name" = gpu_int4_glu-test ] && [ "${MARLIN_TEST_KNOB_VARIANTS:-1}" != 0 ]; then
            step "test $name (GLU_STAGES=8)" "$out/test_${name}_stages8.log" \
                env MARLIN_INT4_GLU_STAGES=8 "$t" --include-ignored --test-threads=1 --nocapture
        fi
        # Session 6's split-K epilogue of the warp-specialised kernel (`_e0`
        # entries of the diagnostic module w4a16_wgmma_ws_diag, loaded only
        # through this knob; docs/CUDA.md change 39).
        if [ "$name" = gpu_int4_wgmma_ws-test ] && [ "${MARLIN_TEST_KNOB_VARIANTS:-1}" != 0 ]; then
            step "test $name (WS_OLD_EPILOGUE=1)" "$out/test_${name}_e0.log" \
                env MARLIN_WGMMA_WS_OLD_EPILOGUE=1 "$t" --test-threads=1 --nocapture wgmma_ws_gemm_matches_reference
        fi
    done
fi
# PyTorch's attention (FlashAttention-2, cuDNN) and a dense f16 GEMM on the
# shapes of gpu_ops' prefill benchmark: the peers of its BENCH lines, timed in
# the same run (MARLIN_ATTN_PEER=0 skips it).
if [ "${MARLIN_ATTN_PEER:-1}" != 0 ] && [ -f scripts/gpu_attn_peer.py ]; then
    step "peer attention (PyTorch)" "$out/peer_attention.log" python3 scripts/gpu_attn_peer.py
fi
# The opt-in stream-K INT4 kernel is timed (`sk us` column, decode bench
# below) only after its own test binary passed in this run: a fault of an
# unmeasured kernel must not cost the benchmark tables.
sk_args=""
if grep -q "^test result: ok" "$out/test_gpu_int4_stream_k-test.log" 2>/dev/null; then
    sk_args="--stream-k"
fi
if [ "${MARLIN_BENCH_GEMM:-1}" != 0 ]; then
    step "bench gemm" "$out/bench_gemm.log" "$stage/bin/marlin-cuda-bench" ${MARLIN_BENCH_ARGS:-} $sk_args
fi
marlin="$stage/bin/marlin"
if [ "${MARLIN_BENCH_DECODE:-1}" != 0 ] && [ -x "$marlin" ]; then
    step "bench decode (graph on/off)" "$out/bench_decode.log" \
        "$marlin" bench decode --device cuda ${MARLIN_BENCH_DECODE_ARGS:---batch 1,8,32 --ctx 512}
fi
# MARLIN_BENCH_DECODE_GLU_AB=1: the batch-1 step with the GLU in the gate|up
# GEMM's epilogue (16- and 8-stage ring) against GEMM + glu, interleaved
# twice (docs/CUDA.md change 41: tests the residency reading of its loss).
if [ "${MARLIN_BENCH_DECODE_GLU_AB:-0}" = 1 ] && [ -x "$marlin" ]; then
    step "bench decode GLU A/B" "$out/bench_decode_glu_ab.log" bash -c '
        for round in 1 2; do
            for v in "MARLIN_INT4_GLU_MIN_M=1 MARLIN_INT4_GLU_STAGES=8" "MARLIN_INT4_GLU_MIN_M=1 MARLIN_INT4_GLU_STAGES=16" "MARLIN_GPU_GLU_IN_GEMM=0"; do
                echo "== round $round: $v"
                env $v "$0" bench decode --device cuda --batch 1,4 --ctx 512 || exit 1
            done
        done' "$marlin"
fi
if [ "${MARLIN_BENCH_DECODE_SK:-0}" = 1 ] && [ -n "$sk_args" ] && [ -x "$marlin" ]; then
    step "bench decode stream-K" "$out/bench_decode_sk.log" \
        env MARLIN_INT4_STREAMK=1 "$marlin" bench decode --device cuda --batch 1 --ctx 512
fi
# MARLIN_KTRACE=1: the decode step's kernel timeline (CUPTI; what each kernel
# of a layer adds to the graph step), scripts/gpu_ktrace.sh.
if [ "${MARLIN_KTRACE:-0}" = 1 ] && [ -x "$marlin" ]; then
    step "decode kernel timeline" "$out/ktrace.log" env MARLIN_STAGE="$stage" OUT="$out" bash scripts/gpu_ktrace.sh
    grep -E "^  |^layer|^==" "$out/ktrace.log" | head -60
fi
# End to end on the real models: CPU vs GPU greedy tokens and logits, then
# generation and llama-bench-style speed on both devices.
models_dir="${MARLIN_MODELS_DIR:-/tmp/marlin-models}"
e2e_logs=()
if [ -x "$marlin" ]; then
    for m in SmolLM2-135M-Instruct.Q4_1.gguf gemma-3-270m-q4_k_m.gguf; do
        f="$models_dir/$m"
        [ -f "$f" ] || { echo "e2e: $f not found (scripts/gpu_ship_models.sh), skipped"; continue; }
        short=${m%%.*}; short=${short%%-Instruct}
        step "e2e cpu-vs-gpu $short" "$out/e2e_$short.log" "$marlin" bench devices "$f" --device cuda --tokens 32
        e2e_logs+=("$out/e2e_$short.log")
        step "e2e run gpu $short" "$out/run_gpu_$short.log" "$marlin" run "$f" "The capital of France is" \
            --device cuda --temperature 0 --max-tokens 32
        e2e_logs+=("$out/run_gpu_$short.log")
        step "bench model gpu $short" "$out/bench_model_gpu_$short.log" "$marlin" bench model "$f" --device cuda --pp 512 --tg 128
        step "bench model cpu $short" "$out/bench_model_cpu_$short.log" "$marlin" bench model "$f" --device cpu --pp 512 --tg 128
        step "bench model gpu nograph $short" "$out/bench_model_gpu_nograph_$short.log" \
            env MARLIN_CUDA_GRAPH=0 "$marlin" bench model "$f" --device cuda --pp 512 --tg 128
        e2e_logs+=("$out/bench_model_gpu_$short.log" "$out/bench_model_gpu_nograph_$short.log" "$out/bench_model_cpu_$short.log")
        # The OpenAI server on the GPU: continuous batching over the paged
        # pool at concurrency 1 / 8 / 32 (standard-library client).
        if [ "$short" = SmolLM2-135M ]; then
            step "serve gpu $short" "$out/serve_gpu_$short.log" python3 scripts/server/bench_serve.py \
                --marlin "$marlin" --model "$f" --device cuda --requests-per-client 4 --max-tokens 64
            e2e_logs+=("$out/serve_gpu_$short.log")
        fi
    done
fi
if [ "${MARLIN_BENCH_SWEEP:-0}" = 1 ]; then
    step "bench gemm split sweep" "$out/bench_sweep.log" "$stage/bin/marlin-cuda-bench" --sweep ${MARLIN_BENCH_SWEEP_ARGS:-}
fi
# MARLIN_NCU="--shape 28672x8192 --ms 1": Nsight Compute sections of one
# decode-kernel launch of that benchmark (clocks left alone).
if [ -n "${MARLIN_NCU:-}" ]; then
    ncu_bin=$(command -v ncu || ls /usr/local/cuda/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
    if [ -n "$ncu_bin" ]; then
        step "ncu ${MARLIN_NCU_KERNEL:-w4a16_dec}" "$out/ncu.log" "$ncu_bin" --clock-control none \
            -k "regex:${MARLIN_NCU_KERNEL:-w4a16_dec}" --launch-skip 10 -c 1 \
            --section SpeedOfLight --section Occupancy --section LaunchStats \
            --section SchedulerStats --section WarpStateStats --section MemoryWorkloadAnalysis \
            "$stage/bin/marlin-cuda-bench" $MARLIN_NCU
    else
        echo "ncu not found"
    fi
fi

if [ -f "$out/test_gpu_ops-test.log" ]; then
    echo
    echo "================ attention benchmark (gpu_ops) and its PyTorch peers ================"
    grep -E "^BENCH" "$out/test_gpu_ops-test.log"
    grep -E "^PEER" "$out/peer_attention.log" 2>/dev/null
    grep -hE "^BENCH" "$out/test_gpu_paged_attention-test.log" 2>/dev/null
fi
if [ -f "$out/bench_gemm.log" ]; then
    echo
    echo "================ GEMM benchmark ================"
    cat "$out/bench_gemm.log"
fi
if [ -f "$out/bench_decode.log" ]; then
    echo
    echo "================ decode benchmark ================"
    cat "$out/bench_decode.log"
fi
if [ -f "$out/bench_decode_glu_ab.log" ]; then
    echo
    echo "================ decode GLU epilogue A/B (batch 1, 4) ================"
    grep -E "^==|^ +[0-9]+ +[0-9]+ +o" "$out/bench_decode_glu_ab.log"
fi
if [ -f "$out/bench_decode_sk.log" ]; then
    echo
    echo "================ decode benchmark, stream-K INT4 (MARLIN_INT4_STREAMK=1) ================"
    cat "$out/bench_decode_sk.log"
fi
for l in "${e2e_logs[@]}"; do
    echo
    echo "================ $(basename "$l" .log) ================"
    tail -n 20 "$l"
done
echo
echo "================ summary ================"
printf '%s\n' "${summary[@]}"
# Modules compiled on this machine (misses of a prewarmed cache: a module
# that gpu_prewarm_kernels.py does not list, or other NVRTC / driver versions).
kc_after=$(ls "$MARLIN_KERNEL_CACHE" | wc -l)
echo "kernel cache: $kc_before before, $((kc_warm - kc_before)) unpacked from the stage, $((kc_after - kc_warm)) compiled here:"
ls -t "$MARLIN_KERNEL_CACHE" | head -n "$((kc_after - kc_warm))" | sed 's/^/  compiled here: /'
