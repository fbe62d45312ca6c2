#!/usr/bin/env bash
# The science measurement (does SepEn beat plain?) at 8 held-out seeds (0-7; 288 images per method and suite): plain, SepEn per-pair
# finetuning, SepEn's test-time variant and Attend-and-Excite on the world's two- and multi-object suites, and the
# single-object cost. Each summary.md ends with every method paired against plain on the same prompts and seeds.
# The suites run side by side, one process each: about 65 minutes on our 2-core CPU while scripts/shapes_results.sh shared
# it. Output: results/shapes/heldout/.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-runs/sepen_heldout}
mkdir -p results/shapes/heldout "$out"
export OMP_NUM_THREADS=1
run_suite() {
    local suite=$1 methods=plain,sepen,sepen_tt,attend_excite
    [ "$suite" = single_object ] && methods=plain,sepen,sepen_tt   # the single-object cost is SepEn's
    python -m benchmark run --suite "$suite" --seeds 0-7 --methods "$methods" --metrics presence --out "$out/$suite" \
        --checkpoint-cache "$out/checkpoints/$suite" --no-html --no-progress > "$out/$suite.log" 2>&1
    for f in summary.md paired.csv results.json; do cp "$out/$suite/$f" "results/shapes/heldout/${suite}_$f"; done
}
# the three suites side by side (three processes, two cores), each with its own checkpoint cache
pids=()
for suite in two_object multi_object single_object; do run_suite "$suite" & pids+=($!); done
for pid in "${pids[@]}"; do wait "$pid"; done
cat results/shapes/heldout/*_summary.md
