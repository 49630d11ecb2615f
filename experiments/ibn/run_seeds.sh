#!/bin/bash
# IBN-a and IBN-b ResNets, 3 seeds; BatchNorm: experiments/baselines/run_seeds.sh. Resumable.
set -e
cd "$(dirname "$0")/../.."
out=experiments/ibn/results.jsonl
scripts/arm.sh $out ibn_a configs/resnet_ibn.py:variant=a
scripts/arm.sh $out ibn_b configs/resnet_ibn.py:variant=b
