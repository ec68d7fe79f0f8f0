#!/usr/bin/env python3
"""Bits per weight of a GGUF's layer linears (attn q/k/v/output, ffn
gate/up/down), the same matrices the bits/weight column of
scripts/quant_table.sh counts for marlin checkpoints; from
`marlin inspect --tensors` (type and shape of every tensor).

Usage: scripts/gguf_linear_bpw.py MARLIN_BINARY MODEL.gguf
"""
import re
import subprocess
import sys

# Storage bits per weight of the ggml block types (block bytes * 8 / block elements).
BPW = {"f32": 32.0, "f16": 16.0, "bf16": 16.0, "q8_0": 8.5, "q5_0": 5.5, "q5_1": 6.0,
       "q4_0": 4.5, "q4_1": 5.0, "q2_k": 2.625, "q3_k": 3.4375, "q4_k": 4.5,
       "q5_k": 5.5, "q6_k": 6.5625, "q8_k": 9.125}
LINEAR = re.compile(r"^blk\.\d+\.(attn_(q|k|v|output)|ffn_(gate|up|down))\.weight$")

out = subprocess.run([sys.argv[1], "inspect", "--tensors", sys.argv[2]],
                     capture_output=True, text=True, check=True).stdout
bits = elems = 0
types = {}
for line in out.splitlines():
    m = re.match(r"^\s+(\S+)\s+(\S+)\s+\[([\d, ]+)\]", line)
    if not m or not LINEAR.match(m.group(1)):
        continue
    n = 1
    for d in m.group(3).split(","):
        n *= int(d)
    ty = m.group(2).lower()
    bits += BPW[ty] * n
    elems += n
    types[ty] = types.get(ty, 0) + n
print(f"{bits / elems:.3f} bits/weight over {elems} linear weights; "
      + ", ".join(f"{t} {100 * n / elems:.1f} %" for t, n in sorted(types.items())))
