r"""ELA experiment: markdown table (mean +- s.e. over seeds) and grouped bar plot per cell.

  python scripts/plot_ela.py experiments/ela/results.jsonl --out experiments/ela/accuracy.png

Rows are ``scripts/seeds_in_process.py`` lines of ``configs/resnet_ela.py``; a cell is
(batch, train_size, steps, width), an arm is the ``attention`` argument.
"""

from __future__ import annotations

import argparse
import collections
import json

import numpy as np

ARMS = ("none", "se", "ca", "ela_t", "ela_b", "ela_s", "ela_l", "ela_bn")


def arg_of(config: str) -> dict:
  arg = config.split(":", 1)[1] if ":" in config else ""
  return dict(item.split("=", 1) for item in arg.split(",") if "=" in item)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("results")
  parser.add_argument("--out", required=True)
  args = parser.parse_args()
  groups = collections.defaultdict(list)
  for line in open(args.results):
    row = json.loads(line)
    a = arg_of(row["config"])
    cell = (
      int(a.get("batch", 128)),
      int(a.get("train_size", 0)) or 1438,
      a.get("steps", "500"),
      a.get("width", "32"),
    )
    groups[(cell, a.get("attention", "ela_b"))].append(row.get("eval_accuracy", np.nan))
  cells = sorted({c for c, _ in groups}, key=lambda c: (-c[0], -c[1]))
  arms = [a for a in ARMS if any((c, a) in groups for c in cells)]
  stat = lambda v: (np.mean(v), np.std(v, ddof=1) / np.sqrt(len(v)) if len(v) > 1 else 0.0)
  head = "| attention | " + " | ".join(
    f"batch {b}, {n} train ({s} steps, width {w})" for b, n, s, w in cells
  )
  print(head + " |")
  print("|---" * (len(cells) + 1) + "|")
  for arm in arms:
    cols = []
    for c in cells:
      v = groups.get((c, arm), [])
      m, se = stat(v) if v else (np.nan, np.nan)
      cols.append(f"{100 * m:.2f} ± {100 * se:.2f} (n={len(v)})" if v else "–")
    print(f"| {arm} | " + " | ".join(cols) + " |")
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(10, 4))
  width = 0.8 / len(arms)
  for i, arm in enumerate(arms):
    ms = [stat(groups[(c, arm)]) if groups.get((c, arm)) else (np.nan, 0) for c in cells]
    ax.bar(
      np.arange(len(cells)) + i * width,
      [100 * m for m, _ in ms],
      width,
      yerr=[100 * s for _, s in ms],
      label=arm,
      capsize=2,
    )
  ax.set_xticks(np.arange(len(cells)) + 0.4 - width / 2)
  ax.set_xticklabels([f"batch {b}, {n} imgs\n{s} steps, width {w}" for b, n, s, w in cells])
  ax.set_ylabel("test accuracy (%)")
  lo = min(100 * np.mean(v) for v in groups.values()) - 5
  ax.set_ylim(max(0, lo), 100)
  ax.legend(ncol=len(arms), fontsize=8)
  ax.set_title("Channel attention in a digits ResNet (mean ± s.e. over seeds)")
  fig.tight_layout()
  fig.savefig(args.out, dpi=120)


if __name__ == "__main__":
  main()
