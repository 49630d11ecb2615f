#!/bin/bash
# Pre-RMSNorm and Pre-CRMSNorm GPT-2, 3 seeds; LayerNorm: experiments/baselines/run_seeds.sh. Resumable.
set -e
cd "$(dirname "$0")/../.."
out=experiments/crmsnorm/results.jsonl
scripts/arm.sh $out gpt2_rmsnorm configs/gpt2_rmsnorm.py
scripts/arm.sh $out gpt2_crmsnorm configs/gpt2_crmsnorm.py
