#!/usr/bin/env bash
# Issue 5's science measurement at 8 held-out seeds (0-7; 288 images per method and suite): plain, SepEn per-pair
# finetuning, SepEn's test-time variant and Attend-and-Excite on the world's two- and multi-object suites, and the
# single-object cost. Each summary.md ends with every method paired against plain on the same prompts and seeds.
# About 45 minutes on one core of our 2-core CPU (the other core was training). Output: results/shapes/heldout/.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-runs/sepen_heldout}
mkdir -p results/shapes/heldout "$out"
export OMP_NUM_THREADS=1
for suite in two_object multi_object single_object; do
    methods=plain,sepen,sepen_tt,attend_excite
    [ "$suite" = single_object ] && methods=plain,sepen,sepen_tt   # the single-object cost is SepEn's (issue 5)
    python -m benchmark run --suite "$suite" --seeds 0-7 --methods "$methods" --metrics presence --out "$out/$suite" \
        --checkpoint-cache "$out/checkpoints" --no-html --no-progress > "$out/$suite.log" 2>&1
    for f in summary.md paired.csv results.json; do cp "$out/$suite/$f" "results/shapes/heldout/${suite}_$f"; done
done
cat results/shapes/heldout/*_summary.md
