#!/bin/bash
# The five WideNet arms x 3 seeds for one model (vit | gpt2); see experiments/widenet/README.md.
set -e
model=$1; shift
cd "$(dirname "$0")/../.."
for arm in unshared shared_all shared_weights widenet widenet_shared_ln; do
  PYTHONPATH=$PWD JAX_PLATFORMS=cpu python scripts/seeds_in_process.py \
    --config configs/${model}_widenet.py:arm=$arm --seeds 3 "$@" \
    --out experiments/widenet/results/${model}_${arm}.jsonl
done
