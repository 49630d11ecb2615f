r"""Grouped bars (mean ± s.e. over seeds) of metrics per arm, from ``collect_runs.py`` rows.

  python scripts/plot_arms.py --out experiments/fedwon/accuracy.png \
      --metrics accuracy/original,accuracy/inverted,mean_accuracy experiments/fedwon/results.jsonl

One bar group per metric, one bar per arm (in file order); ``--title`` names the panel.
"""

from __future__ import annotations

import argparse
import json

import numpy as np


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", required=True)
  parser.add_argument("--metrics", required=True, help="comma-separated row keys")
  parser.add_argument("--title", default="")
  parser.add_argument("--ylabel", default="accuracy")
  parser.add_argument("rows")
  args = parser.parse_args()
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  with open(args.rows) as f:
    rows = [json.loads(line) for line in f if line.strip()]
  arms = list(dict.fromkeys(r["arm"] for r in rows))
  metrics = args.metrics.split(",")
  width = 0.8 / len(arms)
  fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(metrics) * len(arms) / 3), 4))
  for i, arm in enumerate(arms):
    values = [[r[m] for r in rows if r["arm"] == arm] for m in metrics]
    mean = [np.mean(v) for v in values]
    se = [np.std(v, ddof=1) / np.sqrt(len(v)) if len(v) > 1 else 0 for v in values]
    x = np.arange(len(metrics)) + (i - (len(arms) - 1) / 2) * width
    ax.bar(x, mean, width, yerr=se, capsize=2, label=f"{arm} (n={len(values[0])})")
  ax.set_xticks(np.arange(len(metrics)), [m.split("/")[-1] for m in metrics], rotation=20)
  ax.set_ylabel(args.ylabel)
  ax.set_title(args.title)
  ax.legend(fontsize=7, ncol=2)
  fig.tight_layout()
  fig.savefig(args.out, dpi=120)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
