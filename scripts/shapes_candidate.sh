#!/usr/bin/env bash
# A candidate shapes model against the shipped one, on seeds that chose nothing (about 30 minutes on our 2-core CPU):
# 1. the quality bar (single-object presence >= 0.90 with no unrequested object >= 0.80), seed 3000, 36 and 144
#    single-object prompts, and the found fractions of 2-4 objects (benchmark.shapes.evaluate);
# 2. plain on the current suites and on GenEval's six tasks, seeds 0-3, each model's images paired with the other's
#    (`benchmark compare`: the candidate minus the shipped model, 95% bootstrap intervals over the pairs).
# Usage: bash scripts/shapes_candidate.sh MODEL_DIR NAME   -> results/shapes/candidates/NAME/
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:?give the candidate model folder}
name=${2:?give the candidate a name (its results folder)}
shipped=benchmark/shapes/pretrained
out=${OUT:-runs/candidates/$name}
res=results/shapes/candidates/$name
mkdir -p "$res" "$out"
export OMP_NUM_THREADS=2
python -m benchmark.shapes.evaluate --model "$model" --n-per-count 36 --counts 1,2,3,4 --no-heldout --seed 3000 \
    --threads 2 --grid "$res/model_samples.png" | tee "$res/model_quality.txt"
python -m benchmark.shapes.evaluate --model "$model" --n-per-count 144 --counts 1 --no-heldout --seed 3000 \
    --threads 2 | tee -a "$res/model_quality.txt"
for suite in single_object two_object multi_object geneval; do
    metrics=presence
    [ "$suite" = geneval ] && metrics=geneval
    for which in shipped candidate; do
        path=$shipped
        [ "$which" = candidate ] && path=$model
        mkdir -p "$out/$which"
        python -m benchmark run --suite "$suite" --model "$path" --methods plain --seeds 0-3 --metrics "$metrics" \
            --out "$out/$which/$suite" --no-progress --no-html > "$out/$which/$suite.log" 2>&1
    done
    python -m benchmark compare "$out/shipped/$suite" "$out/candidate/$suite" > "$res/${suite}_compare.md"
    cp "$out/candidate/$suite/summary.md" "$res/${suite}_summary.md"
done
cat "$res"/*_compare.md
