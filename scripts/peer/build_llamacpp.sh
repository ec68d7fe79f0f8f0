#!/usr/bin/env bash
# Build llama.cpp's reference tools (CPU only) from the llama-cpp-python sdist
# on PyPI, which vendors llama.cpp under vendor/llama.cpp.
#
# Output: .peer/llama.cpp/build/bin/{llama-bench,llama-perplexity,llama-completion,llama-tokenize}
# Idempotent: does nothing when the binaries already exist.
#
# Environment:
#   LCP_VERSION   llama-cpp-python version (default 0.3.36)
#   LCP_SDIST     path to an already downloaded sdist (skips pip download)
#   JOBS          parallel build jobs (default 2: the machine is shared)
#   PORTABLE=1    build into build-portable/ instead: no -march=native but
#                 AVX/AVX2/FMA/F16C/BMI2 explicitly, no OpenMP, statically
#                 linked, so the binaries can be built on a faster machine and
#                 copied here (then run compare_cpu.sh with
#                 LCP_BIN=.peer/llama.cpp/build-portable/bin).
#   NOAMX=1       build into build-noamx/ instead: AVX-512 + VNNI, no AMX
#                 (LCP_BIN=.peer/llama.cpp/build-noamx/bin).
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
peer_dir="$repo_root/.peer"
version="${LCP_VERSION:-0.3.36}"
jobs="${JOBS:-2}"
src_dir="$peer_dir/llama.cpp"
targets=(llama-bench llama-perplexity llama-completion llama-tokenize llama-quantize)
if [[ "${PORTABLE:-0}" == 1 ]]; then
    build_dir="$src_dir/build-portable"
    cpu_flags=(-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON
        -DGGML_F16C=ON -DGGML_BMI2=ON -DGGML_OPENMP=OFF
        -DCMAKE_EXE_LINKER_FLAGS=-static)
elif [[ "${NOAMX:-0}" == 1 ]]; then
    # AVX-512 (VNNI, VBMI, BF16) and AVX-VNNI without AMX: the native build's
    # AMX path (repacked weights) crashes on the AMX-capable Xeon VM of
    # 2026-11-22; this build keeps weight repacking and is the peer of
    # docs/BENCHMARKS.md's quiet session-3 table.
    build_dir="$src_dir/build-noamx"
    cpu_flags=(-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON
        -DGGML_F16C=ON -DGGML_BMI2=ON -DGGML_AVX512=ON -DGGML_AVX512_VNNI=ON
        -DGGML_AVX512_VBMI=ON -DGGML_AVX512_BF16=ON -DGGML_AVX_VNNI=ON
        -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF -DGGML_OPENMP=ON)
else
    build_dir="$src_dir/build"
    cpu_flags=(-DGGML_NATIVE=ON -DGGML_OPENMP=ON)
fi

all_built=1
for target in "${targets[@]}"; do
    [[ -x "$build_dir/bin/$target" ]] || all_built=0
done
if [[ $all_built == 1 ]]; then
    echo "llama.cpp tools already built in $build_dir/bin"
    exit 0
fi

mkdir -p "$peer_dir"

# 1. Source: the sdist (a local copy if given or cached, else pip download),
#    unless it is already extracted.
if [[ ! -f "$src_dir/CMakeLists.txt" ]]; then
    sdist="${LCP_SDIST:-}"
    if [[ -z "$sdist" ]]; then
        sdist="$peer_dir/llama_cpp_python-$version.tar.gz"
        if [[ ! -f "$sdist" && -f "/tmp/lcp/llama_cpp_python-$version.tar.gz" ]]; then
            cp "/tmp/lcp/llama_cpp_python-$version.tar.gz" "$sdist"
        fi
        if [[ ! -f "$sdist" ]]; then
            python3 -m pip download --no-deps --no-binary :all: \
                -d "$peer_dir" "llama-cpp-python==$version"
        fi
    fi
    echo "extracting vendor/llama.cpp from $sdist"
    tmp_extract="$peer_dir/extract.$$"
    rm -rf "$tmp_extract"
    mkdir -p "$tmp_extract"
    tar -xzf "$sdist" -C "$tmp_extract" --wildcards "*/vendor/llama.cpp/*"
    rm -rf "$src_dir"
    mv "$tmp_extract"/llama_cpp_python-*/vendor/llama.cpp "$src_dir"
    rm -rf "$tmp_extract"
fi

# 2. cmake: system one, else pip's.
if ! command -v cmake >/dev/null 2>&1; then
    echo "cmake not found: installing it with pip"
    python3 -m pip install --quiet cmake
    hash -r
fi
command -v cmake >/dev/null 2>&1 || { echo "error: cmake still not on PATH" >&2; exit 1; }

# 3. Configure + build (Release, CPU only, no network code).
cmake -S "$src_dir" -B "$build_dir" \
    -DCMAKE_BUILD_TYPE=Release \
    -DBUILD_SHARED_LIBS=OFF \
    "${cpu_flags[@]}" \
    -DGGML_CUDA=OFF -DGGML_METAL=OFF -DGGML_VULKAN=OFF \
    -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF \
    -DLLAMA_BUILD_EXAMPLES=ON -DLLAMA_BUILD_TOOLS=ON
cmake --build "$build_dir" --config Release -j "$jobs" --target "${targets[@]}"

for target in "${targets[@]}"; do
    [[ -x "$build_dir/bin/$target" ]] || { echo "error: $target not built" >&2; exit 1; }
done
echo "built: ${targets[*]} in $build_dir/bin"
