#!/bin/bash
# IBN-a, IBN-b and the same ResNet with BatchNorm only, 3 seeds, evaluated on the clean digits and
# on four shifted domains (normjax.data.corruptions.DOMAINS). Resumable.
set -e
cd "$(dirname "$0")/../.."
out=experiments/ibn/results_domains.jsonl
d=--domains=inverted,rotated,noisy,blurred
scripts/arm.sh $out bn_2_2_1 configs/resnet_ibn.py:variant=none $d
scripts/arm.sh $out ibn_a configs/resnet_ibn.py:variant=a $d
scripts/arm.sh $out ibn_b configs/resnet_ibn.py:variant=b $d
