#!/usr/bin/env bash
# GenEval's six tasks on the shapes world (its `geneval` suite, 135 prompts, judged exactly by the world's
# detector with GenEval's rules), 4 seeds a prompt as GenEval makes them, plain / A&E / SepEn / SepEn test-time,
# each paired against plain: results/shapes/geneval_summary.md (.csv, results.json). CPU only.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-runs/shapes_geneval}
mkdir -p results/shapes "$out"
python -m benchmark run --suite geneval --methods plain,attend_excite,sepen,sepen_tt --metrics geneval \
    --seeds 0-3 --out "$out/geneval" --checkpoint-cache "$out/checkpoints" --no-progress > "$out/geneval.log" 2>&1
for f in summary.md summary.csv results.json; do cp "$out/geneval/$f" "results/shapes/geneval_$f"; done
cat results/shapes/geneval_summary.md
