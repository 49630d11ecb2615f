r"""Bar chart of continual-learning runs (``normjax.tools.continual --seeds N`` workdirs).

  python scripts/plot_continual.py --out experiments/adab2n/accuracy.png \
      BN=/tmp/ada/final/bn_b100 AdaB2N=/tmp/ada/final/ada_b100 ...

Left: final accuracy on all test images in eval mode and with the test batch's own
statistics (``summary.json``), mean +- standard error over seeds. Right: the
per-layer running-mean gap (``mean_gap_i`` of each seed's ``results.json``), mean over seeds.
"""

from __future__ import annotations

import argparse
import glob
import json
import os

import numpy as np


def read(workdir: str):
  summary = json.load(open(os.path.join(workdir, "summary.json")))
  results = [
    json.load(open(p)) for p in sorted(glob.glob(os.path.join(workdir, "*", "results.json")))
  ]
  gaps = sorted(k for k in (results[0] if results else {}) if k.startswith("mean_gap_"))
  layer_gaps = [np.mean([r[k] for r in results]) for k in gaps]
  return summary, layer_gaps


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", required=True)
  parser.add_argument("--title", default="")
  parser.add_argument("runs", nargs="+", help="label=workdir")
  args = parser.parse_args()
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  labels, rows = [], []
  for item in args.runs:
    label, _, path = item.rpartition("=")
    labels.append(label)
    rows.append(read(path))
  fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4), gridspec_kw={"width_ratios": [2, 1]})
  x = np.arange(len(labels))
  for offset, key, name in (
    (-0.2, "final_accuracy", "eval mode (running stats)"),
    (0.2, "train_stat_accuracy", "test-batch statistics"),
  ):
    means = [s[key]["mean"] for s, _ in rows]
    errors = [s[key]["se"] for s, _ in rows]
    left.bar(x + offset, means, 0.4, yerr=errors, capsize=3, label=name)
  left.set_xticks(x, labels, rotation=30, ha="right", fontsize=8)
  left.set_ylabel("accuracy after the last task")
  left.set_ylim(0, 1)
  left.legend(fontsize=8)
  left.set_title(args.title, fontsize=9)
  for label, (_, gaps) in zip(labels, rows):
    if gaps:
      right.plot(range(len(gaps)), gaps, marker="o", label=label)
  right.set_xlabel("norm layer")
  right.set_ylabel("RMS (running mean - all-task mean) / std")
  right.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(args.out, dpi=120)


if __name__ == "__main__":
  main()
