r"""Bar chart of ``scripts/seeds_in_process.py`` rows: mean +- s.e. of a metric per config.

  python scripts/plot_seed_rows.py --out experiments/gbw_rbn/accuracy.png --split cond \
      --drop dtype rows64.jsonl [rows32.jsonl ...]

Rows are grouped by their config argument (``configs/x.py:ARG``); the ``--split`` key of the
argument (e.g. ``cond``) picks the bar colour, the rest of the argument labels the bar.
Diverged seeds (``diverged_at_step``) count as missing and are written above the bar as n/N.
Each file is one panel (titled by its file name).
"""

from __future__ import annotations

import argparse
import collections
import json
import os

import numpy as np


def parse_arg(config: str) -> dict:
  arg = config.split(":", 1)[1] if ":" in config else ""
  return dict(item.split("=", 1) for item in arg.split(",") if "=" in item)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", required=True)
  parser.add_argument("--metric", default="eval_accuracy")
  parser.add_argument("--split", default=None)
  parser.add_argument("--drop", nargs="*", default=[])
  parser.add_argument("files", nargs="+")
  args = parser.parse_args()
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, len(args.files), figsize=(6 * len(args.files), 4), squeeze=False)
  for ax, path in zip(axes[0], args.files):
    cells = collections.OrderedDict()
    splits = []
    for line in open(path):
      row = json.loads(line)
      arg = parse_arg(row["config"])
      split = arg.pop(args.split, "") if args.split else ""
      for key in args.drop:
        arg.pop(key, None)
      label = ",".join(f"{k}={v}" for k, v in arg.items())
      if split not in splits:
        splits.append(split)
      cells.setdefault(label, {}).setdefault(split, []).append(row)
    labels = list(cells)
    width = 0.8 / max(len(splits), 1)
    for i, split in enumerate(splits):
      x = np.arange(len(labels)) + (i - (len(splits) - 1) / 2) * width
      means, errors = [], []
      for j, label in enumerate(labels):
        rows = cells[label].get(split, [])
        values = [r[args.metric] for r in rows if "diverged_at_step" not in r]
        means.append(np.mean(values) if values else 0.0)
        errors.append(np.std(values, ddof=1) / np.sqrt(len(values)) if len(values) > 1 else 0.0)
        diverged = len(rows) - len(values)
        if diverged:
          ax.text(x[j], means[-1] + 0.02, f"{diverged}/{len(rows)} NaN", ha="center", fontsize=7)
      ax.bar(
        x, means, width, yerr=errors, capsize=3, label=f"{args.split}={split}" if split else None
      )
    ax.set_xticks(np.arange(len(labels)), labels, rotation=30, ha="right", fontsize=7)
    ax.set_ylabel(args.metric)
    ax.set_title(os.path.basename(path), fontsize=9)
    if args.split:
      ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(args.out, dpi=120)


if __name__ == "__main__":
  main()
