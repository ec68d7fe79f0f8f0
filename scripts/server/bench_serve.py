#!/usr/bin/env python3
"""Serving throughput of `marlin serve` on loopback: aggregate generated
tokens/s at concurrency 1, 8 and 32 (greedy, fixed-length completions),
printed beside the single-stream decode speed `marlin bench model` measures
in the same run, with TTFT / ITL percentiles.

    python3 scripts/server/bench_serve.py [--marlin target/release/marlin] [--model PATH]
        [--concurrency 1,8,32] [--requests-per-client 4] [--max-tokens 64] [--device cuda]

Standard library only (scripts/gpu_entry.sh runs it on the GPU machine,
`--device cuda`, where the server's batches run on the paged GPU pool). It
also reports how many distinct greedy completions each prompt got at each
concurrency level and over all of them (1 where batching changes no
near-tie; on a GPU the batch size changes the GEMM kernels and their
rounding, so near-ties can go either way).
"""
import argparse
import concurrent.futures as cf
import os
import re
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_server import Server, pct, stream_completion  # noqa: E402

PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time, in a small village,",
           "List three colors: 1.", "The best way to learn a language is"]


def single_stream_tg(marlin, model, threads, device):
    out = subprocess.run([marlin, "bench", "model", model, "--threads", str(threads), "--pp", "64", "--tg", "64",
                          "--reps", "1", "--device", device], capture_output=True, text=True, timeout=600)
    # The second column is the thread count on the CPU, the device (cuda:0) on a GPU.
    m = re.search(r"tg64\s+\S+\s+([0-9.]+)", out.stdout + out.stderr)
    return float(m.group(1)) if m else None, (out.stdout + out.stderr).strip().splitlines()[-3:]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--marlin", default="target/release/marlin")
    models = os.environ.get("MARLIN_MODELS", "models")
    ap.add_argument("--model", default=os.path.join(models, "SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--requests-per-client", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2, help="threads of the single-stream baseline (the server uses 2)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N], for the server and the baseline")
    args = ap.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    tg, tail = single_stream_tg(args.marlin, args.model, args.threads, args.device)
    # Server() passes --threads 2 itself.
    s = Server(args.marlin, args.model,
               ["--max-num-seqs", str(max(levels)), "--max-queue", "1024", "--device", args.device])
    rows = []
    completions = {}
    try:
        for c in levels:
            n = c * args.requests_per_client
            t0 = time.time()
            with cf.ThreadPoolExecutor(c) as ex:
                res = list(ex.map(lambda i: stream_completion(s, PROMPTS[i % len(PROMPTS)], args.max_tokens),
                                  range(n)))
            wall = time.time() - t0
            for i, r in enumerate(res):
                completions.setdefault(PROMPTS[i % len(PROMPTS)], {}).setdefault(c, set()).add(r[0])
            m = s.metrics()
            toks = sum(len(r[0]) > 0 for r in res)  # completed requests
            gen = m.get("marlin:generation_tokens_total", float("nan"))
            engine = tuple(m.get(f"marlin:engine_{k}_total", float("nan"))
                           for k in ("steps", "forward_seconds", "step_seconds"))
            ttft = [r[1] for r in res if r[1] is not None]
            itl = [x for r in res for x in r[2]]
            rows.append((c, n, wall, gen, ttft, itl, toks, engine))
    finally:
        s.stop()
    print(f"model: {args.model}; device {args.device}; threads {args.threads}; "
          f"{args.max_tokens} tokens per request (greedy)")
    print(f"single-stream decode (marlin bench model, tg64): {tg} tok/s")
    # Engine columns (from /metrics, per level): steps run, mean step and
    # mean forward pass, and the engine thread's busy share of the wall
    # time (near 100%: the engine sets the pace; well below: the clients
    # or the HTTP layer do).
    print(f"{'conc':>5} {'reqs':>5} {'wall s':>7} {'gen tok/s':>10} {'x single':>9} {'TTFT p50 ms':>12} "
          f"{'TTFT p99 ms':>12} {'ITL p50 ms':>11} {'ITL p99 ms':>11} {'steps':>6} {'step ms':>8} "
          f"{'fwd ms':>7} {'busy':>5}")
    prev_gen, prev_engine = 0.0, (0.0, 0.0, 0.0)
    for c, n, wall, gen, ttft, itl, _, engine in rows:
        tps = (gen - prev_gen) / wall
        prev_gen = gen
        steps, fwd, busy = (a - b for a, b in zip(engine, prev_engine))
        prev_engine = engine
        step_ms = busy / steps * 1e3 if steps else float("nan")
        fwd_ms = fwd / steps * 1e3 if steps else float("nan")
        ratio = tps / tg if tg else float("nan")
        print(f"{c:>5} {n:>5} {wall:>7.1f} {tps:>10.1f} {ratio:>9.2f} {pct(ttft, 50)*1e3:>12.0f} "
              f"{pct(ttft, 99)*1e3:>12.0f} {pct(itl, 50)*1e3:>11.1f} {pct(itl, 99)*1e3:>11.1f} "
              f"{steps:>6.0f} {step_ms:>8.3f} {fwd_ms:>7.3f} {busy / wall:>5.0%}")
    # Per prompt: distinct completions at each concurrency, then over all.
    for p, by_level in completions.items():
        every = set().union(*by_level.values())
        levels_txt = ", ".join(f"{c}: {len(t)}" for c, t in sorted(by_level.items()))
        print(f"distinct greedy completions of {p!r}: {levels_txt}; all levels {len(every)}")
    if any(not t for by_level in completions.values() for ts in by_level.values() for t in ts):
        print("FAIL: an empty completion")
        sys.exit(1)


if __name__ == "__main__":
    main()
