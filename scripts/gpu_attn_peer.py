#!/usr/bin/env python3
"""Peers of marlin's prefill attention, on the GPU machine (PyTorch there).

Times PyTorch's causal `scaled_dot_product_attention` on the shapes of
tests/gpu_ops.rs `bench_decode_attention` (one sequence of 512 / 2048 / 4096
tokens, 32 query heads, 8 kv heads, head_dim 128, f16) with each backend that
runs (FlashAttention-2, cuDNN, memory-efficient), and a dense f16 GEMM
(8192^3, cuBLAS) as the tensor cores' reachable FLOP rate. CUDA events,
warmed up, median of 7 batches. TFLOP/s counts the causal half, as the Rust
benchmark does: 4 * rows * (rows + 1) / 2 * heads * head_dim.

    python3 scripts/gpu_attn_peer.py
"""

import statistics
import sys

try:
    import torch
    import torch.nn.functional as F
except ImportError:
    print("PEER attention: PyTorch not installed, skipped")
    sys.exit(0)


def time_us(fn, reps):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    start = torch.cuda.Event(enable_timing=True)
    end = torch.cuda.Event(enable_timing=True)
    samples = []
    for _ in range(7):
        start.record()
        for _ in range(reps):
            fn()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) * 1000.0 / reps)
    return statistics.median(samples)


def main():
    if not torch.cuda.is_available():
        print("PEER attention: no CUDA device, skipped")
        return
    torch.manual_seed(0)
    dev = torch.device("cuda")
    n = 8192
    a = torch.randn(n, n, device=dev, dtype=torch.float16)
    b = torch.randn(n, n, device=dev, dtype=torch.float16)
    us = time_us(lambda: a @ b, 10)
    print(f"PEER dense f16 GEMM {n}^3 (cuBLAS): {us:9.1f} us {2 * n**3 / us / 1e6:6.1f} TFLOP/s")
    del a, b

    heads, kv_heads, hd = 32, 8, 128
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        backends = [
            ("FlashAttention-2", SDPBackend.FLASH_ATTENTION),
            ("cuDNN", SDPBackend.CUDNN_ATTENTION),
            ("memory-efficient", SDPBackend.EFFICIENT_ATTENTION),
        ]
    except ImportError:
        sdpa_kernel = None
        backends = [("default", None)]
    for rows in (512, 2048, 4096):
        q = torch.empty(1, heads, rows, hd, device=dev, dtype=torch.float16).uniform_(-1, 1)
        k = torch.empty(1, kv_heads, rows, hd, device=dev, dtype=torch.float16).uniform_(-1, 1)
        v = torch.empty_like(k).uniform_(-1, 1)
        # Keys and values repeated per query head: the GQA form every backend takes.
        kr = k.repeat_interleave(heads // kv_heads, dim=1)
        vr = v.repeat_interleave(heads // kv_heads, dim=1)
        flops = 4.0 * rows * (rows + 1) / 2 * heads * hd
        reps = max(2, 20 * 512 // rows)
        for name, backend in backends:

            def run():
                return F.scaled_dot_product_attention(q, kr, vr, is_causal=True)

            try:
                if backend is None:
                    us = time_us(run, reps)
                else:
                    with sdpa_kernel(backend):
                        us = time_us(run, reps)
            except RuntimeError as e:
                print(f"PEER attention prefill {rows} tokens {name}: not available ({str(e).splitlines()[0][:80]})")
                continue
            print(
                f"PEER attention prefill {rows} tokens h{heads}/kv{kv_heads} hd{hd} causal "
                f"{name}: {us:9.1f} us {flops / us / 1e6:6.1f} TFLOP/s"
            )


if __name__ == "__main__":
    main()
