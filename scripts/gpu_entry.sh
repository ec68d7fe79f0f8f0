#!/usr/bin/env bash
# The one entry point run ON the GPU machine (no Rust, no network): runs every
# staged GPU test and benchmark from .gpu-stage/ (built by scripts/gpu.sh) and
# prints a short summary table last. Full logs go to $OUT (or /tmp/marlin-gpu).
#
#   MARLIN_BENCH_ARGS="..."   extra arguments for the main marlin-cuda-bench run
#   MARLIN_BENCH_SWEEP=1      also time every split-K factor (tuning table)
#   MARLIN_BENCH_SWEEP_ARGS   extra arguments of the sweep run (e.g. "--ms 1,16")
#   MARLIN_NCU="--shape NxK --ms 1"  Nsight Compute profile of one decode launch
set -uo pipefail
cd "$(dirname "$0")/.."
stage="${MARLIN_STAGE:-.gpu-stage}"
out="${OUT:-/tmp/marlin-gpu}"
mkdir -p "$out"
export MARLIN_KERNEL_CACHE="${MARLIN_KERNEL_CACHE:-/tmp/marlin-kernel-cache}"

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

for t in "$stage"/tests/*; do
    [ -x "$t" ] || continue
    name=$(basename "$t")
    step "test $name" "$out/test_$name.log" "$t" --include-ignored --test-threads=1 --nocapture
done
step "bench gemm" "$out/bench_gemm.log" "$stage/bin/marlin-cuda-bench" ${MARLIN_BENCH_ARGS:-}
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

echo
echo "================ GEMM benchmark ================"
cat "$out/bench_gemm.log"
echo
echo "================ summary ================"
printf '%s\n' "${summary[@]}"
