r"""Weight Compander experiment: markdown table over seeds and a two-panel plot.

  python scripts/plot_weight_compander.py experiments/weight_compander/results.jsonl \
      --out experiments/weight_compander/weights.png

Rows are ``scripts/weight_compander_seeds.py`` lines; arms are the config's ``arm``. Left
panel: test accuracy (mean +- s.e.); right: the |w| histogram of the Dense/Conv kernels
after training (summed over seeds, density).
"""

from __future__ import annotations

import argparse
import collections
import json

import numpy as np

BINS = np.linspace(0.0, 0.6, 61)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("results")
  parser.add_argument("--out", required=True)
  args = parser.parse_args()
  rows = collections.defaultdict(list)
  for line in open(args.results):
    row = json.loads(line)
    rows[row["config"].split(":", 1)[1]].append(row)
  stat = lambda v: (np.mean(v), np.std(v, ddof=1) / np.sqrt(len(v)) if len(v) > 1 else 0.0)
  print(
    "| arm | test accuracy (%) | test loss | final train loss | max abs w | frac abs w < 0.01 |"
  )
  print("|---|---|---|---|---|---|")
  for arm, rs in rows.items():
    cols = []
    for key, scale in (
      ("eval_accuracy", 100),
      ("eval_loss", 1),
      ("train_loss", 1),
      ("max_abs_w", 1),
      ("frac_small_w", 1),
    ):
      m, se = stat([r[key] for r in rs])
      cols.append(f"{scale * m:.4g} ± {scale * se:.2g}")
    print(f"| {arm} (n={len(rs)}) | " + " | ".join(cols) + " |")
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
  names = list(rows)
  ms = [stat([100 * r["eval_accuracy"] for r in rows[n]]) for n in names]
  ax1.bar(range(len(names)), [m for m, _ in ms], yerr=[s for _, s in ms], capsize=3)
  ax1.set_xticks(range(len(names)))
  ax1.set_xticklabels(names, fontsize=8)
  ax1.set_ylim(min(m for m, _ in ms) - 3, min(100, max(m for m, _ in ms) + 2))
  ax1.set_ylabel("test accuracy (%)")
  ax1.set_title("digits, 300 training images (mean ± s.e.)")
  centers = (BINS[1:] + BINS[:-1]) / 2
  for n in names:
    h = np.sum([r["hist"] for r in rows[n]], axis=0).astype(float)
    ax2.plot(centers, h / h.sum(), label=n)
  ax2.set_yscale("log")
  ax2.set_xlabel("|w| of Dense/Conv kernels after training (last bin: >= 0.6)")
  ax2.set_ylabel("fraction")
  ax2.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(args.out, dpi=120)


if __name__ == "__main__":
  main()
