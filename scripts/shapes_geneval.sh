#!/usr/bin/env bash
# GenEval's six tasks on the shapes world (its `geneval` suite, 135 prompts, judged exactly by the world's
# detector with GenEval's rules), 4 seeds a prompt as GenEval makes them, plain / A&E / SepEn / SepEn test-time,
# each paired against plain: results/shapes/geneval_summary.md (.csv, results.json). CPU only, two processes
# (torchrun, one thread each).
# MODEL=DIR (default: the shipped model) and RESULTS=DIR (default: results/shapes) score another model.
set -euo pipefail
cd "$(dirname "$0")/.."
model=${MODEL:-benchmark/shapes/pretrained}
res=${RESULTS:-results/shapes}
out=${OUT:-runs/shapes_geneval}
mkdir -p "$res" "$out"
torchrun --nproc_per_node 2 -m benchmark run --suite geneval --model "$model" \
    --methods plain,attend_excite,sepen,sepen_tt --metrics geneval --seeds 0-3 --device cpu \
    --out "$out/geneval" --checkpoint-cache "$out/checkpoints" --no-progress > "$out/geneval.log" 2>&1
for f in summary.md summary.csv results.json; do cp "$out/geneval/$f" "$res/geneval_$f"; done
cat "$res/geneval_summary.md"
