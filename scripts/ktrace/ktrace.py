#!/usr/bin/env python3
"""Per-kernel cost of one decode step, from a trace of inject.cpp.

usage: ktrace.py TRACE.csv | ktrace.py --self-test

Steps are cut after the last argmax kernel of each step (the decode bench
picks greedy tokens); steps of the most common kernel count are kept and
the fastest quarter of them (the CUDA-graph replays) averaged position by
position. With programmatic dependent launch a kernel starts long before
its predecessor ends (it waits inside), so its duration says little; the
column that adds up to the step is the end delta, end(i) - end(i-1): what
kernel i adds to the step's critical path. The layer's kernel sequence is
found as the period of the names, and each position is averaged over the
layers.
"""
import collections
import sys


def load(path):
    rows = []
    with open(path) as f:
        for line in f:
            parts = line.rstrip("\n").split(",", 3)
            if len(parts) == 4:
                rows.append((int(parts[0]), int(parts[1]), int(parts[2]), parts[3]))
    rows.sort()
    return rows


def steps_of(rows):
    ends = [i for i, r in enumerate(rows)
            if "argmax" in r[3] and not (i + 1 < len(rows) and "argmax" in rows[i + 1][3])]
    steps = [rows[a + 1:b + 1] for a, b in zip(ends, ends[1:])]
    steps = [s for s in steps if len(s) >= 8]
    if not steps:
        return [], 0
    typical = collections.Counter(len(s) for s in steps).most_common(1)[0][0]
    return [s for s in steps if len(s) == typical], typical


def layer_period(names):
    for period in range(4, 16):
        for offset in range(0, 8):
            body = names[offset:]
            span = (len(body) // period) * period
            if span >= period * 8 and all(body[x] == body[x % period] for x in range(span)):
                return period, offset, span // period
    return None


# (name, end delta in ns) of the self-test's layer.
LAYER = (("mops_resid_norm", 2000), ("w4a16_dec_m4", 7000), ("attn_decode", 5000), ("w4a16_dec_m4", 6000))


def self_test():
    """A synthetic trace of 8 steps (embedding, 10 layers of 4 kernels,
    argmax), overlapping starts as under PDL, every other step slower: the
    layer is found and its end deltas are the ones built in."""
    import os
    import tempfile
    lines, t = [], 1_000_000
    for step in range(8):
        slow = 500 if step % 2 else 0  # graph-off-like steps, excluded
        lines.append(f"{t},{t + 3000},1,mops_embedding_rows")
        end = t + 3000
        for _ in range(10):
            for name, cost in LAYER:
                lines.append(f"{end - 1000},{end + cost + slow},256,{name}")
                end += cost + slow
        lines.append(f"{end - 1000},{end + 4000},32,samp_argmax_split_f16")
        t = end + 10_000
    with tempfile.NamedTemporaryFile("w", suffix=".csv", delete=False) as f:
        f.write("\n".join(lines) + "\n")
        path = f.name
    try:
        rows = load(path)
    finally:
        os.unlink(path)
    steps, typical = steps_of(rows)
    assert typical == 42 and len(steps) == 7, (typical, len(steps))
    assert layer_period([r[3] for r in steps[0]]) == (4, 1, 10)
    fast = [s for s in steps if s[-1][1] - s[0][0] < 215_000]
    assert len(fast) == 3, [s[-1][1] - s[0][0] for s in steps]
    for s in fast:
        for q, (_, cost) in enumerate(LAYER):
            i = 1 + 4 * 5 + q  # a layer in the middle
            assert s[i][1] - s[i - 1][1] == cost, (q, s[i][1] - s[i - 1][1])
    print("ktrace self-test: PASS")


def main():
    if sys.argv[1:] == ["--self-test"]:
        self_test()
        return
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    rows = load(sys.argv[1])
    steps, typical = steps_of(rows)
    print(f"kernels traced: {len(rows)}; steps of {typical} kernels: {len(steps)}")
    if not steps:
        sys.exit("no decode steps found (no argmax kernels?)")
    walls = sorted(((s[-1][1] - s[0][0]) / 1000, k) for k, s in enumerate(steps))
    print(f"step wall (first start to last end): min {walls[0][0]:.1f}, median "
          f"{walls[len(walls) // 2][0]:.1f}, max {walls[-1][0]:.1f} us")
    best = [steps[k] for _, k in walls[:max(1, len(walls) // 4)]]
    n = typical
    names = [r[3] for r in best[0]]
    delta, dur, lead = [0.0] * n, [0.0] * n, [0.0] * n
    for s in best:
        for i in range(n):
            dur[i] += (s[i][1] - s[i][0]) / 1000
            if i:
                delta[i] += (s[i][1] - s[i - 1][1]) / 1000
                lead[i] += (s[i - 1][1] - s[i][0]) / 1000
    k = len(best)
    delta, dur, lead = [d / k for d in delta], [d / k for d in dur], [d / k for d in lead]
    print(f"averaged over the {k} fastest steps (us): end delta = end(i) - end(i-1); "
          f"early = how long before its predecessor's end the kernel started")
    found = layer_period(names)
    if found is None:
        for i in range(n):
            print(f"  [{i:3d}] {names[i][:48]:48s} blocks {best[0][i][2]:6d} end delta {delta[i]:8.2f} "
                  f"duration {dur[i]:8.2f} early {lead[i]:7.2f}")
        return
    period, offset, layers = found
    print(f"layer: {period} kernels from position {offset}, {layers} layers")
    total = 0.0
    for q in range(period):
        idx = range(offset + q, offset + layers * period, period)
        d = sum(delta[i] for i in idx) / layers
        total += d
        print(f"  {names[offset + q][:48]:48s} blocks {best[0][offset + q][2]:6d} end delta {d:8.2f} "
              f"duration {sum(dur[i] for i in idx) / layers:8.2f} early {sum(lead[i] for i in idx) / layers:7.2f}")
    print(f"  per layer {total:.2f} us, x {layers} = {total * layers:.1f} us; outside the layers:")
    for i in list(range(offset)) + list(range(offset + layers * period, n)):
        print(f"  [{i:3d}] {names[i][:48]:48s} blocks {best[0][i][2]:6d} end delta {delta[i]:8.2f} "
              f"duration {dur[i]:8.2f}")


if __name__ == "__main__":
    main()
