#!/bin/bash
# Region Normalization against InstanceNorm / BatchNorm in the same inpainting net, 3 seeds (resumable).
set -e
cd "$(dirname "$0")/../.."
out=experiments/region_norm/results.jsonl
scripts/arm.sh $out region_norm configs/inpaint_regionnorm.py
scripts/arm.sh $out instancenorm configs/inpaint_regionnorm.py:norm=instancenorm
scripts/arm.sh $out batchnorm configs/inpaint_regionnorm.py:norm=batchnorm
python scripts/seed_table.py --metrics eval_psnr,eval_loss $out \
  --plot experiments/region_norm/psnr.png --title "inpainting 8x8 digits (4x4 hole), 1000 steps"
