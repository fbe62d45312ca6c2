#!/usr/bin/env bash
# The shipped shapes model (benchmark/shapes/pretrained), from nothing, in two stages on a CPU (about 80 minutes on
# our 2-core CPU; on a GPU, add `--device cuda` to both commands):
# 1. the base model: VAE, decoder, then 1,000 diffusion steps on captions of one to four coloured shapes
#    (one thread: the configuration whose weights are reproduced bit for bit, results/shapes/training.json);
# 2. GenEval's grammar taught from the base model (--init): 800 steps on a mix of full captions, colourless names,
#    counts and relations (two threads, results/shapes/training_geneval.json).
# Usage: bash scripts/train_shapes_model.sh [WORK_DIR] [EXPORT_DIR]   (defaults /tmp/shapes_model, WORK_DIR/export)
# Rerunning either command resumes it. Compare an export with the shipped weights:
#   python scripts/same_weights.py benchmark/shapes/pretrained EXPORT_DIR
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-/tmp/shapes_model}
export_dir=${2:-$work/export}
python -m benchmark.shapes.train --out "$work/base" --steps 1000 --batch 128 --warmup 100 \
    --export "$work/base/export"
python -m benchmark.shapes.train --out "$work/geneval" --init "$work/base/export" --seed 1 \
    --steps 800 --batch 64 --lr 3e-4 --warmup 50 --threads 2 \
    --caption-mix full=0.6,colourless=0.1,count=0.15,relation=0.15 --export "$export_dir"
