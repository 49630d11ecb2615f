#!/bin/bash
# EvoNorm-B0 (batch 128) and EvoNorm-S0 (batch 2) ResNets, 3 seeds; BatchNorm: experiments/baselines.
set -e
cd "$(dirname "$0")/../.."
out=experiments/evonorm/results.jsonl
scripts/arm.sh $out evonorm_b0 configs/resnet_evonorm.py
scripts/arm.sh $out evonorm_s0_batch2 configs/resnet_evonorm.py:norm=evonorm_s0,batch=2
scripts/arm.sh $out groupnorm_batch2 configs/resnet_batchnorm.py:norm=groupnorm --set batch_size=2 --set total_steps=4000 --set optimizer.learning_rate=0.00625
