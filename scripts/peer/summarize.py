#!/usr/bin/env python3
"""Prints the marlin vs llama.cpp tables of one compare_cpu.sh run folder.

Usage: scripts/peer/summarize.py .peer/runs/<time>

Reads the raw outputs compare_cpu.sh wrote (NAME.out / NAME.err / NAME.rc /
NAME.cmd per command) and prints speed, perplexity and greedy-text tables,
then a one-line-per-model summary. A command that failed or whose output
cannot be parsed shows as "FAIL(rc)" / "n/a" instead of a number.
"""

import json
import re
import sys
from pathlib import Path

MODELS = ["SmolLM2-135M-Instruct.Q4_1", "gemma-3-270m-q4_k_m"]


class Run:
    def __init__(self, folder: Path):
        self.folder = folder

    def exists(self, name: str) -> bool:
        return (self.folder / f"{name}.rc").exists()

    def rc(self, name: str):
        path = self.folder / f"{name}.rc"
        return int(path.read_text().strip()) if path.exists() else None

    def out(self, name: str) -> str:
        path = self.folder / f"{name}.out"
        return path.read_text(errors="replace") if path.exists() else ""

    def err(self, name: str) -> str:
        path = self.folder / f"{name}.err"
        return path.read_text(errors="replace") if path.exists() else ""

    def status(self, name: str) -> str:
        rc = self.rc(name)
        if rc is None:
            return "not run"
        return "ok" if rc == 0 else f"FAIL({rc})"


def fmt(value, spec=".1f"):
    return "n/a" if value is None else format(value, spec)


def ratio(a, b):
    return None if a is None or b is None or b == 0 else a / b


def lcp_bench(run: Run, tag: str):
    """(pp tok/s, pp stddev, tg tok/s, tg stddev) from llama-bench -o json."""
    try:
        rows = json.loads(run.out(f"{tag}.lcp.bench"))
    except json.JSONDecodeError:
        return None, None, None, None
    pp = next((r for r in rows if r.get("n_prompt", 0) > 0 and r.get("n_gen", 0) == 0), None)
    tg = next((r for r in rows if r.get("n_gen", 0) > 0 and r.get("n_prompt", 0) == 0), None)
    return (
        pp and pp["avg_ts"],
        pp and pp["stddev_ts"],
        tg and tg["avg_ts"],
        tg and tg["stddev_ts"],
    )


def marlin_bench(run: Run, tag: str):
    """(pp tok/s, tg tok/s) from `marlin bench model`."""
    text = run.out(f"{tag}.marlin.bench")
    pp = re.search(r"^pp\d+\s+\d+\s+([\d.]+)", text, re.M)
    tg = re.search(r"^tg\d+\s+\d+\s+([\d.]+)", text, re.M)
    return (pp and float(pp.group(1)), tg and float(tg.group(1)))


def lcp_ppl(run: Run, tag: str):
    text = run.err(f"{tag}.lcp.ppl") + run.out(f"{tag}.lcp.ppl")
    m = re.search(r"Final estimate: PPL = ([\d.]+) \+/- ([\d.]+)", text)
    chunks = re.search(r"calculating perplexity over (\d+) chunks", text)
    return (
        m and float(m.group(1)),
        m and float(m.group(2)),
        chunks and int(chunks.group(1)),
    )


def marlin_ppl(run: Run, tag: str):
    m = re.search(r"perplexity: ([\d.]+) ± ([\d.]+)", run.out(f"{tag}.marlin.ppl"))
    info = re.search(r"(\d+) tokens, (\d+) windows", run.err(f"{tag}.marlin.ppl"))
    return (
        m and float(m.group(1)),
        m and float(m.group(2)),
        info and int(info.group(1)),
        info and int(info.group(2)),
    )


def lcp_token_count(run: Run, tag: str):
    try:
        return len(json.loads(run.out(f"{tag}.lcp.tokens")))
    except json.JSONDecodeError:
        return None


def lcp_continuation(run: Run, name: str) -> str:
    """llama-completion --no-display-prompt: the continuation, then
    " [end of text]\\n" if it stopped at EOS, then "\\n\\n" at exit."""
    text = run.out(name)
    if text.endswith("\n\n"):
        text = text[:-2]
    if text.endswith(" [end of text]\n"):
        text = text[: -len(" [end of text]\n")]
    return text


def marlin_continuation(run: Run, name: str, prompt: str) -> str:
    """marlin run echoes the prompt, streams the continuation, ends with "\\n"."""
    text = run.out(name)
    if text.startswith(prompt):
        text = text[len(prompt):]
    if text.endswith("\n"):
        text = text[:-1]
    return text


def common_prefix(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    run = Run(Path(sys.argv[1]))
    machine = (run.folder / "machine.txt")
    print(f"\n# run {run.folder.name}")
    if machine.exists():
        print(machine.read_text().rstrip())
    summary = []

    print("\n## speed (tok/s, llama-bench mean ± sd; marlin bench model median)")
    print(f"{'model':<28} {'test':<6} {'llama.cpp':>16} {'marlin':>9} {'marlin/lcp':>10}")
    speeds = {}
    for tag in MODELS:
        if not run.exists(f"{tag}.lcp.bench") and not run.exists(f"{tag}.marlin.bench"):
            continue
        lpp, lpp_sd, ltg, ltg_sd = lcp_bench(run, tag)
        mpp, mtg = marlin_bench(run, tag)
        speeds[tag] = (lpp, ltg, mpp, mtg)
        for test, lv, sd, mv in (("pp512", lpp, lpp_sd, mpp), ("tg128", ltg, ltg_sd, mtg)):
            lcell = "n/a" if lv is None else f"{lv:.1f} ± {sd:.1f}"
            mcell = fmt(mv) if mv is not None else run.status(f"{tag}.marlin.bench")
            print(f"{tag:<28} {test:<6} {lcell:>16} {mcell:>9} {fmt(ratio(mv, lv), '.2f'):>10}")

    print("\n## perplexity (data/eval/licenses.txt, ctx 512, second half of each window)")
    print(
        f"{'model':<28} {'tokens lcp/marlin':>17} {'chunks':>6} "
        f"{'llama.cpp':>16} {'marlin':>16} {'rel diff':>9}"
    )
    ppls = {}
    for tag in MODELS:
        if not run.exists(f"{tag}.lcp.ppl") and not run.exists(f"{tag}.marlin.ppl"):
            continue
        lp, lp_err, lchunks = lcp_ppl(run, tag)
        mp, mp_err, mtokens, mwindows = marlin_ppl(run, tag)
        ltokens = lcp_token_count(run, tag)
        rel = None if lp is None or mp is None else (mp - lp) / lp
        ppls[tag] = rel
        lcell = "n/a" if lp is None else f"{lp:.4f} ± {lp_err:.4f}"
        mcell = run.status(f"{tag}.marlin.ppl") if mp is None else f"{mp:.4f} ± {mp_err:.4f}"
        chunks = f"{fmt(lchunks, 'd')}/{fmt(mwindows, 'd')}"
        toks = f"{fmt(ltokens, 'd')}/{fmt(mtokens, 'd')}"
        print(
            f"{tag:<28} {toks:>17} {chunks:>6} {lcell:>16} {mcell:>16} "
            f"{'n/a' if rel is None else format(rel * 100, '+.3f') + '%':>9}"
        )

    print("\n## greedy continuations (32 tokens, temperature 0)")
    gens = {}
    for tag in MODELS:
        i = 0
        matches, total = 0, 0
        while (run.folder / f"prompt{i}.txt").exists():
            prompt = (run.folder / f"prompt{i}.txt").read_text()
            lname, mname = f"{tag}.lcp.gen{i}", f"{tag}.marlin.gen{i}"
            i += 1
            if not run.exists(lname):
                continue
            lcont = lcp_continuation(run, lname)
            mcont = marlin_continuation(run, mname, prompt) if run.rc(mname) == 0 else None
            total += 1
            if mcont is None:
                verdict = f"marlin {run.status(mname)}"
            elif lcont == mcont:
                verdict = "MATCH"
                matches += 1
            else:
                verdict = f"DIFFER after {common_prefix(lcont, mcont)} chars"
            print(f"{tag} | {prompt!r}: {verdict}")
            print(f"    llama.cpp: {lcont!r}")
            if mcont is not None and mcont != lcont:
                print(f"    marlin   : {mcont!r}")
        if total:
            gens[tag] = (matches, total)

    print("\n## summary")
    print(
        f"{'model':<28} {'pp512 x':>8} {'tg128 x':>8} {'ppl diff':>9} {'greedy':>7}"
    )
    for tag in MODELS:
        if tag not in speeds and tag not in ppls and tag not in gens:
            continue
        lpp, ltg, mpp, mtg = speeds.get(tag, (None, None, None, None))
        rel = ppls.get(tag)
        matches, total = gens.get(tag, (0, 0))
        print(
            f"{tag:<28} {fmt(ratio(mpp, lpp), '.2f'):>8} {fmt(ratio(mtg, ltg), '.2f'):>8} "
            f"{'n/a' if rel is None else format(rel * 100, '+.2f') + '%':>9} "
            f"{(str(matches) + '/' + str(total)) if total else 'n/a':>7}"
        )
    print("(pp512 x, tg128 x: marlin tok/s / llama.cpp tok/s; ppl diff: (marlin - lcp) / lcp)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
