#!/usr/bin/env bash
# Ship the two real models (98 MB + 253 MB, more than one `run` call may
# carry) to the GPU machine in parts:
#
#   bash scripts/gpu_ship_models.sh      # here: writes .gpu-models/ (git-ignored)
#
# then make the `run` calls it prints, back to back (the machine keeps
# /tmp between calls only while it stays warm, ~30 s after each call). Each
# call carries one <= 56 MiB part of a tar of both models and copies it to
# /tmp/marlin-models/parts/ (idempotent: repeating a call is harmless); the
# last call also unpacks the tar into /tmp/marlin-models/ and checks the
# sha256 of each model. scripts/gpu_entry.sh runs the end-to-end checks when
# /tmp/marlin-models holds the models (MARLIN_MODELS_DIR overrides).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
models_dir="${MARLIN_MODELS_SRC:-$repo/models}"
out="$repo/.gpu-models"
part_mib="${MARLIN_PART_MIB:-56}"
# MARLIN_SHIP_MODELS="a.gguf b.gguf" ships a subset (fewer calls).
read -r -a models <<< "${MARLIN_SHIP_MODELS:-SmolLM2-135M-Instruct.Q4_1.gguf gemma-3-270m-q4_k_m.gguf}"

for m in "${models[@]}"; do
    [ -f "$models_dir/$m" ] || { echo "missing $models_dir/$m" >&2; exit 1; }
done
rm -rf "$out"
mkdir -p "$out"
tar -C "$models_dir" -cf - "${models[@]}" | split -b "${part_mib}M" -d -a 2 - "$out/models.tar.part"
(cd "$models_dir" && sha256sum "${models[@]}") > "$out/SHA256SUMS"
parts=("$out"/models.tar.part*)
n=${#parts[@]}

echo "# ${n} parts of <= ${part_mib} MiB in .gpu-models/; make these run calls back to back:"
i=0
for p in "${parts[@]}"; do
    i=$((i + 1))
    rel=".gpu-models/$(basename "$p")"
    carry="[\"$rel\"]"
    cmd="mkdir -p /tmp/marlin-models/parts && cp $rel /tmp/marlin-models/parts/ && ls -l /tmp/marlin-models/parts"
    if [ "$i" -eq "$n" ]; then
        carry="[\"$rel\", \".gpu-models/SHA256SUMS\"]"
        cmd="$cmd && cat /tmp/marlin-models/parts/models.tar.part* | tar -x -C /tmp/marlin-models && rm -rf /tmp/marlin-models/parts && cp .gpu-models/SHA256SUMS /tmp/marlin-models/ && cd /tmp/marlin-models && sha256sum -c SHA256SUMS"
    fi
    echo
    echo "run  timeout_s: 60  carry: $carry"
    echo "     command: $cmd"
done
