#!/bin/bash
# PowerNorm, 3 seeds per model; the LayerNorm arms are experiments/baselines/run_seeds.sh. Resumable.
set -e
cd "$(dirname "$0")/../.."
out=experiments/powernorm/results.jsonl
scripts/arm.sh $out vit_powernorm configs/vit_powernorm.py
scripts/arm.sh $out gpt2_powernorm configs/gpt2_powernorm.py
