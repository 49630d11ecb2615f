#!/bin/bash
# alpha-BN at test time over 3 trained BatchNorm ResNets (seeds 0-2) and 5 corruption severities
# (resumable: a finished run is not retrained; the evaluation rows are rewritten).
set -e
cd "$(dirname "$0")/../.."
out=experiments/alpha_bn/results.jsonl
rm -f $out
for s in 0 1 2; do
  w=workdirs/alpha_bn/seed$s
  [ -f $w/final.json ] || python -m normjax.train --config configs/resnet_batchnorm.py \
    --config.seed=$s --workdir $w
  python -m normjax.tools.alpha_bn_eval --workdir $w --alphas 0,0.1,1 --severities 1,2,3,4,5 \
    --out $out
done
python scripts/plot_alpha_bn.py $out experiments/alpha_bn/accuracy_vs_severity.png
