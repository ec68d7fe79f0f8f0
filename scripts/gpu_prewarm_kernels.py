#!/usr/bin/env python3
"""Precompile the crate's NVRTC modules HERE into a kernel-cache folder that
the GPU machine then starts with (MARLIN_KERNEL_CACHE), so that a fresh GPU
machine loads CUBINs instead of compiling each module cold (15-45 s per
module there, paid out of the device time).

    python3 scripts/gpu_prewarm_kernels.py OUT_DIR [--arch sm_90a] [--driver 13000]

The file names are the crate's cache keys (src/nvrtc_cache.rs: FNV-1a of the
source, the shared header, the NVRTC options, the architecture and
"driver D nvrtc X.Y"), so the GPU machine's NVRTC version and driver
version must be the ones given here (the H100 machine: driver 13000, NVRTC
13.0, as the pip nvidia-cuda-nvrtc==13.0.* that CI installs). A mismatch
costs nothing but the time saved: those modules compile on the device as
before. scripts/gpu_entry.sh copies $stage/kernel-cache in and reports how
many modules it still had to compile (the misses: a module missing from
MODULES below, or a version mismatch).

MODULES mirrors the (module name, source) pairs of the Rust loaders; keep it
in step when a loader adds a module or a source prefix.
"""
import argparse
import ctypes
import glob
import importlib.util
import os
import re
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KERNEL_DIR = os.path.join(ROOT, "crates", "marlin-cuda", "src", "kernels")

BF16 = "#define MARLIN_ACT_BF16 1\n"
# module name -> (file, prefix): as the Rust loaders build them.
MODULES = {
    "act_order": ("act_order.cu", ""),  # src/int4/act_order.rs
    "bench_read": ("bench_read.cu", ""),  # src/bench_read.rs
    "ggml_blocks": ("ggml_blocks.cu", ""),  # src/ggml/launch.rs
    "hadamard": ("hadamard.cu", ""),  # src/hadamard.rs
    "decode_ops": ("ops.cu", ""),  # src/ops/mod.rs OPS_MODULE
    "paged_attention": ("paged_attention.cu", ""),  # src/ops/paged.rs
    "decode_sampling": ("sampling.cu", ""),  # src/ops/sampling.rs
    "w4a16_bulk": ("w4a16_bulk.cu", ""),  # src/int4/bulk.rs
    "w4a16_gemm": ("w4a16_gemm.cu", ""),  # src/int4/gemm.rs
    "w4a16_layers": ("w4a16_layers.cu", ""),  # src/int4/layers.rs
    "w4a16_gemm_bf16": ("w4a16_gemm.cu", BF16),
    "w4a16_gemm_fused": ("w4a16_gemm.cu", "#define W4_FUSED_ENTRIES 1\n"),
    "w4a16_wgmma": ("w4a16_wgmma.cu", ""),  # src/int4/wgmma.rs
    "w4a16_wgmma_diag": ("w4a16_wgmma.cu", "#define W4G_DIAG_ENTRIES 1\n"),
    "w4a16_wgmma_bf16": ("w4a16_wgmma.cu", BF16),
    "w4a16_wgmma_ws": ("w4a16_wgmma_ws.cu", ""),  # src/int4/wgmma_ws.rs
    "w4a16_wgmma_ws_diag": ("w4a16_wgmma_ws.cu", "#define WS_DIAG_ENTRIES 1\n"),
    "w4a16_wgmma_ws_bf16": ("w4a16_wgmma_ws.cu", BF16),
    "wx_wgmma_ws": ("w4a16_wgmma_ws.cu", "#define WS_WX_ENTRIES 1\n"),  # src/wgemm/wgmma_ws.rs
    "wx_wgmma_ws_bf16": ("w4a16_wgmma_ws.cu", BF16 + "#define WS_WX_ENTRIES 1\n"),
    "wxa16_gemm": ("wxa16_gemm.cu", ""),  # src/wgemm/gemm.rs
    "wxa16_gemm_bf16": ("wxa16_gemm.cu", BF16),
}
# The timing probes of MARLIN_INT4_DEC_PROBE: the parts (name, define) in
# canonical order, read from the Rust loader's PROBE_PARTS (src/int4/gemm.rs,
# kernel_probe), so that the module names and prefixes built here are the
# ones the binary asks for.
def read_probe_parts():
    with open(os.path.join(ROOT, "crates", "marlin-cuda", "src", "int4", "gemm.rs")) as f:
        src = f.read()
    block = re.search(r"const PROBE_PARTS: \[\(&str, &str\); \d+\] = \[(.*?)\];", src, re.S)
    if not block:
        sys.exit("PROBE_PARTS not found in src/int4/gemm.rs")
    return [(name, define.replace("\\n", "\n")) for name, define in re.findall(r'\("([a-z-]+)", "([^"]*)"\)', block.group(1))]


PROBE_PARTS = read_probe_parts()
DEFAULT_PROBES = ["no-offset", "raw"]


def probe_modules(value):
    """The plain and fused probe modules of a MARLIN_INT4_DEC_PROBE value."""
    parts = {p.strip() for p in value.split("+")}
    unknown = parts - {name for name, _ in PROBE_PARTS}
    if unknown or {"no-offset", "raw"} <= parts:
        sys.exit(f"not a module probe: {value!r}")
    suffix = "_probe" + "".join("_" + n.replace("-", "_") for n, _ in PROBE_PARTS if n in parts)
    prefix = "".join(d for n, d in PROBE_PARTS if n in parts)
    return {
        "w4a16_gemm" + suffix: ("w4a16_gemm.cu", prefix),
        "w4a16_gemm_fused" + suffix: ("w4a16_gemm.cu", "#define W4_FUSED_ENTRIES 1\n" + prefix),
    }


# src/ops/attention.rs: one module per head dimension.
for hd in (16, 32, 64, 128, 256):
    MODULES[f"decode_attention_hd{hd}"] = ("attention.cu", f"#define ATT_ONLY_HD {hd}\n")


def attention_variant(value):
    """The head_dim-128 attention module of a measurement build: `stamps`
    (MARLIN_CUDA_ATTN_STAMPS=1), `ringN` (MARLIN_CUDA_ATTN_RING=N) or both
    joined by '+', with the defines in src/ops/attention.rs's order (the
    module name is the plain one: only the source, so the cache key,
    differs)."""
    parts = {p.strip() for p in value.split("+")}
    stamps = "#define ATT_STAMPS 1\n" if "stamps" in parts else ""
    rings = [p for p in parts if re.fullmatch(r"ring([1-9]|10)", p)]
    if parts - {"stamps"} - set(rings) or len(rings) > 1:
        sys.exit(f"not an attention variant: {value!r}")
    ring = f"#define ATT_RING_KEYS {rings[0][4:]}\n" if rings else ""
    return ("attention.cu", f"#define ATT_ONLY_HD 128\n{stamps}{ring}")


def fnv1a(parts):
    """src/nvrtc_cache.rs fnv1a: each part's bytes, then a 0xff separator."""
    h = 0xCBF29CE484222325
    for p in parts:
        for b in p:
            h ^= b
            h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
        h ^= 0xFF
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", help="kernel-cache folder to fill")
    ap.add_argument("--arch", default="sm_90a")
    ap.add_argument("--driver", type=int, default=13000, help="the GPU machine's cuDriverGetVersion")
    ap.add_argument("--probes", default=",".join(DEFAULT_PROBES),
                    help="comma-separated MARLIN_INT4_DEC_PROBE values to precompile (default: %(default)s)")
    ap.add_argument("--attn", default="",
                    help="comma-separated head_dim-128 attention measurement builds to precompile too "
                         "(stamps, ringN, stamps+ringN)")
    ap.add_argument("modules", nargs="*", help="only these modules (default: all)")
    args = ap.parse_args()
    for value in filter(None, args.probes.split(",")):
        MODULES.update(probe_modules(value))
    for value in filter(None, args.attn.split(",")):
        # Named apart here only; the file name carries the plain module name.
        MODULES["decode_attention_hd128@" + value] = attention_variant(value)
    spec = importlib.util.spec_from_file_location("ck", os.path.join(ROOT, "scripts", "check_kernels_nvrtc.py"))
    ck = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ck)
    lib, _, (major, minor) = ck.load_nvrtc()
    versions = f"driver {args.driver} nvrtc {major}.{minor}".encode()
    with open(os.path.join(KERNEL_DIR, ck.COMMON_HEADER), "rb") as f:
        header = f.read()
    options = " ".join(ck.COMMON_OPTIONS).encode()
    unknown = set(args.modules) - set(MODULES)
    if unknown:
        sys.exit(f"unknown modules: {', '.join(sorted(unknown))}")
    listed = {file for file, _ in MODULES.values()}
    for path in sorted(glob.glob(os.path.join(KERNEL_DIR, "*.cu"))):
        if os.path.basename(path) not in listed:
            print(f"warning: {os.path.basename(path)} is in no MODULES entry (it will compile on the GPU machine)")
    os.makedirs(args.out, exist_ok=True)
    failures = 0
    current = []
    for name, (file, prefix) in MODULES.items():
        if args.modules and name not in args.modules:
            continue
        with open(os.path.join(KERNEL_DIR, file), "rb") as f:
            src = prefix.encode() + f.read()
        key = fnv1a([src, header, options, args.arch.encode(), versions])
        module = name.split("@")[0]
        path = os.path.join(args.out, f"{module}-{args.arch}-{key:016x}.cubin")
        current.append(os.path.basename(path))
        if os.path.exists(path):
            print(f"have {os.path.basename(path)}")
            continue
        t0 = time.time()
        prog = ctypes.c_void_p()
        lib.nvrtcCreateProgram(ctypes.byref(prog), src, module.encode(), 1,
                               (ctypes.c_char_p * 1)(header), (ctypes.c_char_p * 1)(ck.COMMON_HEADER.encode()))
        opts = [f"--gpu-architecture={args.arch}".encode()] + [o.encode() for o in ck.COMMON_OPTIONS]
        rc = lib.nvrtcCompileProgram(prog, len(opts), (ctypes.c_char_p * len(opts))(*opts))
        if rc != 0:
            print(f"FAIL {name}: nvrtcCompileProgram returned {rc}")
            failures += 1
        else:
            size = ctypes.c_size_t()
            lib.nvrtcGetCUBINSize(prog, ctypes.byref(size))
            buf = ctypes.create_string_buffer(size.value)
            lib.nvrtcGetCUBIN(prog, buf)
            tmp = path + ".tmp"
            with open(tmp, "wb") as f:
                f.write(buf.raw)
            os.replace(tmp, path)
            print(f"made {os.path.basename(path)} ({size.value} bytes, {time.time() - t0:.1f} s)")
        lib.nvrtcDestroyProgram(ctypes.byref(prog))
    # The keys of this source tree (the folder may hold older ones); a
    # subset run leaves the list of the last full run alone.
    if not args.modules:
        with open(os.path.join(args.out, "current.txt"), "w") as f:
            f.write("".join(n + "\n" for n in current if os.path.exists(os.path.join(args.out, n))))
    if failures:
        sys.exit(f"{failures} module(s) failed to compile")


if __name__ == "__main__":
    main()
