#!/usr/bin/env bash
# The checks that wait for a GPU, in one call that fits a lent machine's time (estimated 10 minutes on one H200;
# each writes its JSON after every part, so a run cut short keeps what it measured):
#   1. the main command at the GPU's speed (docs/speed.md): benchmark run against the library, SepEn checkpoints
#      against sae train, the paper's main table projected against the anchors, two ranks on one GPU;
#   2. SDXL (docs/backbones.md): the per-pair finetune on SDXL base's architecture, bf16 with and without the graph.
# Usage: bash scripts/gpu_session.sh OUT_DIR   (the JSON files go there; copy them to results/gpu_check/)
set -euo pipefail
out="${1:-${OUT:-results/gpu_check}}"
device="$(python -c 'import torch; print(torch.cuda.get_device_name().split()[-1].lower() if torch.cuda.is_available() else "cpu")')"
day="$(date +%F)"
mkdir -p "$out"
python scripts/gpu_run_check.py --json "$out/$device-run-$day.json"
python scripts/gpu_check.py --arch sdxl-base --parts finetune,graphs --variants bf16,bf16_graph \
    --json "$out/$device-sdxl-$day.json"
