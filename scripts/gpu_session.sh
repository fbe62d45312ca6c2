#!/usr/bin/env bash
# The checks that wait for a GPU (estimated 10 minutes on one H200 in all; each writes its JSON after every part,
# so a run cut short keeps what it measured):
#   run:  the main command at the GPU's speed (docs/speed.md): benchmark run against the library, SepEn
#         checkpoints against sae train, the paper's main table projected against the anchors, two ranks on one GPU;
#   sdxl: SDXL (docs/backbones.md): the per-pair finetune on SDXL base's architecture, bf16 with and without the
#         graph (writes and loads a 13 GB random model).
# Usage: bash scripts/gpu_session.sh OUT_DIR [run|sdxl|all]   (default all; one part a call fits a 10-minute limit;
# the JSON files go to OUT_DIR: copy them to results/gpu_check/)
set -euo pipefail
out="${1:-${OUT:-results/gpu_check}}"
part="${2:-all}"
case "$part" in run|sdxl|all) ;; *) echo "error: part must be run, sdxl or all, got $part" >&2; exit 2 ;; esac
# the card's model ("NVIDIA H100 80GB HBM3" -> h100), for the file names
device="$(python -c 'import re, torch
name = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
found = re.search(r"\b[A-Z]+[0-9]+", name.removeprefix("NVIDIA "))
print((found.group(0) if found else name.split()[-1]).lower())')"
day="$(date +%F)"
mkdir -p "$out"
status=0
if [[ "$part" != sdxl ]]; then  # a failure still lets the SDXL part run, and the exit status says it
    python scripts/gpu_run_check.py --json "$out/$device-run-$day.json" || { echo "gpu_run_check failed" >&2; status=1; }
fi
if [[ "$part" != run ]]; then
    python scripts/gpu_check.py --arch sdxl-base --parts finetune,graphs --variants bf16,bf16_graph \
        --json "$out/$device-sdxl-$day.json" || { echo "gpu_check --arch sdxl-base failed" >&2; status=1; }
fi
exit "$status"
