#!/usr/bin/env python3
"""Compile every CUDA kernel of marlin-cuda with NVRTC, as the crate does at
run time, for sm_90a (Hopper) and sm_80 (the portable path). Fails on any
compile error. No GPU needed.

NVRTC comes from pip: `pip install 'nvidia-cuda-nvrtc==13.0.*'` (or point
MARLIN_NVRTC_LIB at a libnvrtc.so). Usage:

    python3 scripts/check_kernels_nvrtc.py [--show-log] [--jobs N] [FILE.cu ...]

The compiles run in N worker processes (default: the CPU count), each with
its own NVRTC; results print in the fixed file / variant / arch order.
"""

import argparse
import concurrent.futures
import ctypes
import glob
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KERNEL_DIR = os.path.join(ROOT, "crates", "marlin-cuda", "src", "kernels")
ARCHS = ["sm_90a", "sm_80"]
# Keep in sync with crates/marlin-cuda/src/nvrtc_cache.rs (NVRTC_OPTIONS).
COMMON_OPTIONS = ["-std=c++17", "--use_fast_math", "-default-device"]
# The shared device helpers, handed to every program as an in-memory header
# under this name, as nvrtc_cache.rs does (COMMON_HEADER): no search path.
COMMON_HEADER = "marlin_common.cuh"
# Sources the crate also compiles with a prefix (a second module of the same
# file): w4a16_gemm.cu's fused decode-step variants (src/int4/gemm.rs,
# FUSED_SOURCE); the diagnostic / legacy entries of the two wgmma kernels
# (DIAG_SOURCE in src/int4/wgmma.rs and src/int4/wgmma_ws.rs); the wgemm
# formats' warp-specialised entries (src/wgemm/wgmma_ws.rs); the bf16
# activation modules (MARLIN_ACT_BF16, src/act.rs); attention.cu with its
# timing stamps.
BF16 = b"#define MARLIN_ACT_BF16 1\n"
# Every loop / prologue / epilogue probe part of MARLIN_INT4_DEC_PROBE at once
# (src/int4/gemm.rs PROBE_PARTS), so that each define's code compiles.
PROBE_PARTS_ALL = (b"#define W4_DQ_PROBE 2\n#define W4_PROBE_NO_ACT 1\n#define W4_PROBE_NO_SCALE 1\n"
                   b"#define W4_PROBE_NO_STORE 1\n#define W4_PROBE_NO_SCALE_TILE 1\n")
PREFIXED = {
    "w4a16_gemm.cu": [b"#define W4_FUSED_ENTRIES 1\n", BF16, b"#define W4_DQ_PROBE 1\n", b"#define W4_DQ_PROBE 2\n",
                      b"#define W4_FUSED_ENTRIES 1\n#define W4_DQ_PROBE 1\n",
                      b"#define W4_FUSED_ENTRIES 1\n#define W4_DQ_PROBE 2\n",
                      PROBE_PARTS_ALL, b"#define W4_FUSED_ENTRIES 1\n" + PROBE_PARTS_ALL],
    "wxa16_gemm.cu": [BF16],
    # The decode attention's timing stamps (MARLIN_CUDA_ATTN_STAMPS=1,
    # src/ops/attention.rs) and its deepest measurement ring
    # (MARLIN_CUDA_ATTN_RING=10), on the model shapes' head_dim only.
    "attention.cu": [b"#define ATT_ONLY_HD 128\n#define ATT_STAMPS 1\n",
                     b"#define ATT_ONLY_HD 128\n#define ATT_RING_KEYS 10\n"],
    "w4a16_wgmma.cu": [b"#define W4G_DIAG_ENTRIES 1\n", BF16],
    "w4a16_wgmma_ws.cu": [
        b"#define WS_DIAG_ENTRIES 1\n",
        b"#define WS_WX_ENTRIES 1\n",
        BF16,
        BF16 + b"#define WS_WX_ENTRIES 1\n",
    ],
}


def find_nvrtc():
    env = os.environ.get("MARLIN_NVRTC_LIB")
    if env:
        return env
    candidates = []
    for base in sys.path:
        candidates += glob.glob(os.path.join(base, "nvidia", "cu13", "lib", "libnvrtc.so*"))
        candidates += glob.glob(os.path.join(base, "nvidia", "cuda_nvrtc", "lib", "libnvrtc.so*"))
    candidates += glob.glob("/usr/local/cuda/lib64/libnvrtc.so*")
    candidates = [c for c in candidates if "builtins" not in c and ".alt." not in c]
    if not candidates:
        sys.exit("libnvrtc not found: pip install 'nvidia-cuda-nvrtc==13.0.*' or set MARLIN_NVRTC_LIB")
    return candidates[0]  # first in sys.path order (PYTHONPATH wins)


def compile_one(lib, path, arch, prefix=b""):
    with open(path, "rb") as f:
        src = prefix + f.read()
    with open(os.path.join(KERNEL_DIR, COMMON_HEADER), "rb") as f:
        headers = (ctypes.c_char_p * 1)(f.read())
    include_names = (ctypes.c_char_p * 1)(COMMON_HEADER.encode())
    prog = ctypes.c_void_p()
    name = os.path.basename(path).encode()
    rc = lib.nvrtcCreateProgram(ctypes.byref(prog), src, name, 1, headers, include_names)
    if rc != 0:
        return False, f"nvrtcCreateProgram returned {rc}"
    opts = [f"--gpu-architecture={arch}".encode()] + [o.encode() for o in COMMON_OPTIONS]
    arr = (ctypes.c_char_p * len(opts))(*opts)
    rc = lib.nvrtcCompileProgram(prog, len(opts), arr)
    size = ctypes.c_size_t()
    lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    lib.nvrtcGetProgramLog(prog, log)
    cubin_size = ctypes.c_size_t()
    if rc == 0:
        lib.nvrtcGetCUBINSize(prog, ctypes.byref(cubin_size))
    lib.nvrtcDestroyProgram(ctypes.byref(prog))
    text = log.value.decode(errors="replace").strip()
    if rc != 0:
        return False, f"nvrtcCompileProgram returned {rc}\n{text}"
    return True, f"cubin {cubin_size.value} bytes" + (f"\n{text}" if text else "")


def load_nvrtc():
    """libnvrtc as a ctypes library, its path and its (major, minor) version
    (also used by scripts/gpu_prewarm_kernels.py)."""
    lib_path = find_nvrtc()
    # NVRTC dlopens libnvrtc-builtins at compile time; the pip wheel's lib
    # directory is not on the loader path, so load it first, globally.
    for builtins in sorted(glob.glob(os.path.join(os.path.dirname(lib_path), "libnvrtc-builtins.so*"))):
        if ".alt." not in builtins:
            ctypes.CDLL(builtins, mode=ctypes.RTLD_GLOBAL)
    lib = ctypes.CDLL(lib_path)
    major, minor = ctypes.c_int(), ctypes.c_int()
    lib.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor))
    return lib, lib_path, (major.value, minor.value)


_WORKER_LIB = None


def compile_job(job):
    """One (path, arch, prefix) compile in a worker process, NVRTC loaded
    once per worker."""
    global _WORKER_LIB
    if _WORKER_LIB is None:
        _WORKER_LIB = load_nvrtc()[0]
    path, arch, prefix = job
    return compile_one(_WORKER_LIB, path, arch, prefix)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--show-log", action="store_true", help="print NVRTC logs of successful compiles too")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="worker processes (default: CPUs)")
    ap.add_argument("files", nargs="*", help="check only these .cu files (base names, e.g. ops.cu); default all")
    args = ap.parse_args()
    lib, lib_path, (major, minor) = load_nvrtc()
    print(f"NVRTC {major}.{minor} from {lib_path}")
    sources = sorted(glob.glob(os.path.join(KERNEL_DIR, "*.cu")))
    if args.files:
        wanted = {os.path.basename(f) for f in args.files}
        missing = wanted - {os.path.basename(p) for p in sources}
        if missing:
            sys.exit(f"not under {KERNEL_DIR}: {', '.join(sorted(missing))}")
        sources = [p for p in sources if os.path.basename(p) in wanted]
    if not sources:
        sys.exit(f"no .cu files under {KERNEL_DIR}")
    jobs = [(path, arch, prefix)
            for path in sources
            for prefix in [b""] + PREFIXED.get(os.path.basename(path), [])
            for arch in ARCHS]
    failures = 0
    with concurrent.futures.ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        # map keeps the jobs' order; the slow ones (attention.cu) overlap the rest.
        for (path, arch, prefix), (ok, msg) in zip(jobs, pool.map(compile_job, jobs)):
            rel = os.path.relpath(path, ROOT) + (f" ({prefix.decode().strip()})" if prefix else "")
            print(f"{'PASS' if ok else 'FAIL'} {rel} {arch}: {msg.splitlines()[0] if ok and not args.show_log else msg}",
                  flush=True)
            failures += 0 if ok else 1
    if failures:
        sys.exit(f"{failures} kernel compile(s) failed")


if __name__ == "__main__":
    main()
