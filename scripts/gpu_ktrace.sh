#!/usr/bin/env bash
# Kernel timeline of the decode step on the GPU machine (which has no Nsight
# Systems): `marlin bench decode` runs under a CUPTI injection library
# (scripts/ktrace/inject.cpp, built here with g++), and scripts/ktrace/ktrace.py
# prints what each kernel of a layer adds to the CUDA-graph step (end delta).
# Called by gpu_entry.sh with MARLIN_KTRACE=1 (its library path and kernel
# cache set up); alone: MARLIN_TESTS=0 MARLIN_BENCH_GEMM=0 MARLIN_BENCH_DECODE=0
# MARLIN_KTRACE=1 bash .gpu-stage/gpu_entry.sh
#
#   MARLIN_KTRACE_BATCHES="1 8"   batch sizes, one traced process each
#   MARLIN_KTRACE_ARGS="--ctx 512"  other arguments of `marlin bench decode`
# CUPTI: the toolkit's (/usr/local/cuda/extras/CUPTI, /usr/local/cuda), else
# the pip wheel's that gpu.sh stages with MARLIN_STAGE_CUPTI=1 ($stage/cupti).
set -uo pipefail
cd "$(dirname "$0")/.."
stage="${MARLIN_STAGE:-.gpu-stage}"
out="${OUT:-/tmp/marlin-gpu}"
mkdir -p "$out"
inc="" lib=""
for base in /usr/local/cuda/extras/CUPTI /usr/local/cuda /usr/local/cuda/targets/x86_64-linux "$stage/cupti"; do
    [ -z "$inc" ] && [ -f "$base/include/cupti.h" ] && inc="$base/include"
    for d in "$base/lib64" "$base/lib"; do
        [ -z "$lib" ] && ls "$d"/libcupti.so* > /dev/null 2>&1 && lib="$d"
    done
done
if [ -z "$inc" ] || [ -z "$lib" ]; then
    echo "ktrace: CUPTI not found (header '$inc', library '$lib'); stage it with MARLIN_STAGE_CUPTI=1 bash scripts/gpu.sh"
    exit 1
fi
cupti_so=$(ls "$lib"/libcupti.so* | head -1)
so="$out/libktrace.so"
g++ -O2 -shared -fPIC scripts/ktrace/inject.cpp -I"$inc" -I/usr/local/cuda/include "$cupti_so" \
    -Wl,-rpath,"$lib" -o "$so" || exit 1
rc=0
for b in ${MARLIN_KTRACE_BATCHES:-1 8}; do
    echo "== decode step kernel timeline, batch $b (CUPTI $cupti_so)"
    KTRACE_OUT="$out/ktrace_b$b.csv" CUDA_INJECTION64_PATH="$so" timeout 300 \
        "$stage/bin/marlin" bench decode --device cuda --batch "$b" ${MARLIN_KTRACE_ARGS:---ctx 512} \
        > "$out/ktrace_b$b.log" 2>&1 || { echo "bench failed, see $out/ktrace_b$b.log"; rc=1; continue; }
    grep -E '^ +[0-9]+ +[0-9]+ +on' "$out/ktrace_b$b.log"
    python3 scripts/ktrace/ktrace.py "$out/ktrace_b$b.csv" | tee "$out/ktrace_b$b.txt" || rc=1
    xz -f "$out/ktrace_b$b.csv"
done
exit $rc
