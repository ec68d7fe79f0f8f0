#!/usr/bin/env bash
# Build marlin-cuda's release binaries and GPU test binaries HERE (the GPU
# machine has no Rust toolchain) and stage them in the git-ignored
# .gpu-stage/, which `run` carries to the GPU machine:
#
#   bash scripts/gpu.sh          # then, on the GPU machine:
#   bash scripts/gpu_entry.sh    # all GPU tests + benchmarks, summary last
#
# MARLIN_BUILD_ROOT=<dir> builds from another checkout (e.g. a copy of the
# workspace) but still stages into this repository.
# MARLIN_STAGE=<name> stages into <repo>/<name> instead of .gpu-stage (several
# people staging different builds at once); carry that folder.
# The cuda build uses its own target directory (target/cuda) so that it does
# not replace the CPU-only release binaries in target/release.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
build_root="${MARLIN_BUILD_ROOT:-$repo}"
stage="$repo/${MARLIN_STAGE:-.gpu-stage}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$build_root/target/cuda}"
cd "$build_root"

cargo build --release -p marlin-cuda --features cuda --bins
cargo build --release -p marlin-cli --features cuda
# Test executables: parse cargo's JSON messages for compiled test targets.
cargo test --release -p marlin-cuda --features cuda --no-run --message-format=json \
    > "$stage.json"
# The GPU decoder's test against the CPU model and GpuLinear's CUDA-graph test
# of every quantized format (marlin-models, feature cuda).
cargo test --release -p marlin-models --features cuda --test gpu_decoder --test gpu_paged --test gpu_linear_formats --no-run \
    --message-format=json >> "$stage.json"
rm -rf "$stage"
mkdir -p "$stage/bin" "$stage/tests"
python3 - "$stage.json" "$stage/tests" <<'PY'
import json, shutil, sys, os
msgs, dest = sys.argv[1], sys.argv[2]
for line in open(msgs):
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if (m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"].get("test")
            and m["target"]["kind"][0] != "bin"):
        name = m["target"]["name"]
        kind = m["target"]["kind"][0]
        out = os.path.join(dest, f"{name}-{kind}")
        shutil.copy2(m["executable"], out)
        print("staged", out)
PY
rm -f "$stage.json"
for b in marlin-cuda-bench marlin; do
    cp "$CARGO_TARGET_DIR/release/$b" "$stage/bin/"
    echo "staged $stage/bin/$b"
done
cp "$repo/scripts/gpu_entry.sh" "$stage/"
# MARLIN_PREWARM_KERNELS=1: also compile every NVRTC module here (pip NVRTC
# 13.0, the GPU machine's driver 13000) into the crate's cache-key names, so
# that the GPU machine starts with a warm kernel cache (gpu_entry.sh unpacks
# it) instead of compiling each module cold out of the device time. ~7 min on
# 2 cores the first time; target/kernel-cache-prewarm keeps the CUBINs, so
# later runs compile only the modules whose source changed. ~2 MB packed.
if [ "${MARLIN_PREWARM_KERNELS:-0}" = 1 ]; then
    kc="$build_root/target/kernel-cache-prewarm"
    python3 "$build_root/scripts/gpu_prewarm_kernels.py" "$kc"
    python3 - "$kc" "$stage/kernel-cache.tar.xz" <<'PY'
import os, sys, tarfile
src, dst = sys.argv[1], sys.argv[2]
# Only this tree's keys (current.txt), not older CUBINs of the folder.
names = sorted(open(os.path.join(src, "current.txt")).read().split())
with tarfile.open(dst, "w:xz") as t:
    for f in names:
        t.add(os.path.join(src, f), arcname=f)
print(f"staged {dst} ({len(names)} CUBINs, {os.path.getsize(dst)} bytes)")
PY
fi
# MARLIN_STAGE_CUPTI=1: CUPTI's headers and library from pip (nvidia-cuda-cupti
# 13.0, ~5 MB) for scripts/gpu_ktrace.sh, in case the GPU machine's toolkit
# lacks them.
if [ "${MARLIN_STAGE_CUPTI:-0}" = 1 ]; then
    wheels="$build_root/target/cupti-wheel"
    mkdir -p "$wheels" "$stage/cupti"
    ls "$wheels"/nvidia_cuda_cupti-13.0*.whl > /dev/null 2>&1 \
        || pip download --no-deps 'nvidia-cuda-cupti==13.0.*' -d "$wheels"
    python3 - "$(ls "$wheels"/nvidia_cuda_cupti-13.0*.whl | head -1)" "$stage/cupti" <<'PY'
import os, sys, zipfile
whl, dest = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(whl) as z:
    for name in z.namelist():
        rel = name.split("nvidia/cu13/", 1)[-1]
        if rel.startswith("include/") or rel.startswith("lib/libcupti.so"):
            path = os.path.join(dest, rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with z.open(name) as src, open(path, "wb") as dst:
                dst.write(src.read())
print(f"staged CUPTI from {os.path.basename(whl)} into {dest}")
PY
fi
# Debug info and symbols are most of the size; the carried tree (stage +
# the repository's tracked files) is limited to 64 MiB.
for f in "$stage"/bin/* "$stage"/tests/*; do objcopy --strip-all "$f"; done
du -sh "$stage"
