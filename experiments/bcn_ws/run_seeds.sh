#!/bin/bash
# BCN + WS at batch 128 and at batch 2 (estimated BN statistics), 3 seeds; BN: experiments/baselines.
set -e
cd "$(dirname "$0")/../.."
out=experiments/bcn_ws/results.jsonl
scripts/arm.sh $out bcn_ws configs/resnet_bcn_ws.py
scripts/arm.sh $out bcn_ws_batch2 configs/resnet_bcn_ws.py:batch=2,estimated=True
