#!/bin/bash
# BN-only training, its all-parameters, head-only and BN + head controls, 3 seeds (resumable).
set -e
cd "$(dirname "$0")/../.."
out=experiments/bn_only/results.jsonl
scripts/arm.sh $out bn_only configs/resnet_bn_only.py
scripts/arm.sh $out all_parameters configs/resnet_bn_only.py:trainable=all
scripts/arm.sh $out head_only configs/resnet_bn_only.py:trainable=head
scripts/arm.sh $out bn_and_head configs/resnet_bn_only.py:trainable=norm_affine_and_head
