#!/bin/bash
# Peri-LN GPT-2 with and without the embedding norm, 3 seeds; Pre-LN: experiments/baselines/run_seeds.sh.
set -e
cd "$(dirname "$0")/../.."
out=experiments/peri_ln/results.jsonl
scripts/arm.sh $out gpt2_perinorm configs/gpt2_perinorm.py
scripts/arm.sh $out gpt2_perinorm_embedding_norm configs/gpt2_perinorm.py:embedding_norm=True
