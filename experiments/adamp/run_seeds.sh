#!/bin/bash
# AdamP / SGDP and their AdamW / SGD controls, ResNet and ViT, 3 seeds (resumable).
set -e
cd "$(dirname "$0")/../.."
out=experiments/adamp/results.jsonl
t=(--trace "conv[12]?'\]\['kernel")  # the 9 conv kernels of the ResNet: their norm over training
scripts/arm.sh $out vit_adamp configs/vit_adamp.py
scripts/arm.sh $out vit_adamw configs/vit_adamp.py:optimizer=adamw
scripts/arm.sh $out resnet_adamp configs/resnet_adamp.py "${t[@]}"
scripts/arm.sh $out resnet_adamw configs/resnet_adamp.py:optimizer=adamw "${t[@]}"
scripts/arm.sh $out resnet_sgdp configs/resnet_sgdp.py "${t[@]}"
scripts/arm.sh $out resnet_sgd configs/resnet_sgdp.py:optimizer=sgd "${t[@]}"
