#!/bin/bash
# Unified Normalization on the ViT, 3 seeds; LayerNorm: experiments/baselines/run_seeds.sh. Resumable.
set -e
cd "$(dirname "$0")/../.."
out=experiments/unified_norm/results.jsonl
scripts/arm.sh $out vit_unified configs/vit_unified.py
