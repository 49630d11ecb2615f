#!/bin/bash
# The LayerNorm / BatchNorm baselines every normalization experiment compares with, 3 seeds (resumable).
set -e
cd "$(dirname "$0")/../.."
out=experiments/baselines/results.jsonl
scripts/arm.sh $out vit_layernorm configs/vit_layernorm.py
scripts/arm.sh $out resnet_batchnorm configs/resnet_batchnorm.py
scripts/arm.sh $out gpt2_layernorm configs/gpt2_layernorm.py
scripts/arm.sh $out resnet_batchnorm_batch2 configs/resnet_batchnorm.py --set batch_size=2 --set total_steps=4000 --set optimizer.learning_rate=0.00625
