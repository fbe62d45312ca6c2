#!/usr/bin/env bash
# Probe: SepEn per-pair finetuning on the shapes world with clean latents at the release's RELATIVE amplitude.
# The release draws clean latents with std = the VAE's scaling_factor (0.18215 on SD 1.x, whose real latents have
# std ~1 after scaling); the world's VAE has scaling_factor 1.0, so its default amplitude is 1. Here the latents get
# std 0.18215 instead, as SD's do relative to its images. Seeds 0-7 of two_object (288 images per method), paired
# with plain. Output: results/shapes/probes/latent_amplitude_*.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${OUT:-runs/probe_latent_amplitude}
mkdir -p results/shapes/probes "$out"
export OMP_NUM_THREADS=1
python -m benchmark run --suite two_object --seeds 0-7 --methods plain,sepen --metrics presence \
    --sepen-latent-scale 0.18215 --out "$out/two_object" --checkpoint-cache "$out/checkpoints" --no-html \
    --no-progress > "$out/two_object.log" 2>&1
for f in summary.md paired.csv results.json; do cp "$out/two_object/$f" "results/shapes/probes/latent_amplitude_$f"; done
cat results/shapes/probes/latent_amplitude_summary.md
