r"""Table and bar chart of ``scripts/gcr_transfer.py`` rows: per model and head, mean +- s.d.
over seeds of the accuracy on the trained classes and of the linear-probe transfer accuracy.

  python scripts/plot_gcr.py --out experiments/gcr/transfer.png \
      experiments/gcr/resnet.jsonl experiments/gcr/vit.jsonl

Each file is one panel (titled by its file name); prints a markdown table to stdout, then the
per-seed paired differences between heads (the same seed gives every head the same backbone
init and data order: the head is built last).
"""

from __future__ import annotations

import argparse
import collections
import json
import os

import numpy as np

METRICS = (("eval_accuracy", "accuracy, digits 0-4"), ("probe_accuracy", "probe, digits 5-9"))


def grouped(path):
  rows = collections.defaultdict(list)
  with open(path) as f:
    for line in f:
      row = json.loads(line)
      rows[row["head"]].append(row)
  return rows


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", required=True)
  parser.add_argument("files", nargs="+")
  args = parser.parse_args()
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, len(args.files), figsize=(5 * len(args.files), 3.6), squeeze=False)
  print("| model | head | seeds | accuracy 0-4 | probe 5-9 | within-class ratio 5-9 |")
  print("|---|---|---|---|---|---|")
  for ax, path in zip(axes[0], args.files):
    model = os.path.basename(path).removesuffix(".jsonl")
    rows = grouped(path)
    heads = list(rows)
    for i, (metric, label) in enumerate(METRICS):
      values = [np.array([r[metric] for r in rows[h]]) for h in heads]
      means = [v.mean() for v in values]
      sds = [v.std(ddof=1) if len(v) > 1 else 0.0 for v in values]
      x = np.arange(len(heads)) + (i - 0.5) * 0.38
      ax.bar(x, means, 0.36, yerr=sds, capsize=3, label=label)
      for xi, v in zip(x, values):
        ax.plot(np.full(len(v), xi), v, "k.", ms=3)
    for h in heads:
      cell = lambda m: (
        f"{np.mean([r[m] for r in rows[h]]):.4f} ± {np.std([r[m] for r in rows[h]], ddof=1):.4f}"
      )
      print(
        f"| {model} | {h} | {len(rows[h])} | {cell('eval_accuracy')} | {cell('probe_accuracy')} "
        f"| {cell('within_ratio')} |"
      )
    lows = [min(r[m] for r in rs for m, _ in METRICS) for rs in rows.values()]
    ax.set_ylim(max(0.0, min(lows) - 0.05), 1.005)
    ax.set_xticks(np.arange(len(heads)), heads)
    ax.set_title(f"{model} (mean ± s.d., dots: seeds)")
    ax.legend(loc="lower right", fontsize=8)
  fig.tight_layout()
  fig.savefig(args.out, dpi=120)
  print("\n| model | difference (paired by seed) | accuracy 0-4 | probe 5-9 | probe wins |")
  print("|---|---|---|---|---|")
  for path in args.files:
    by_seed = {h: {r["seed"]: r for r in rs} for h, rs in grouped(path).items()}
    for a, b in (("grassmann", "linear"), ("grassmann", "cosine"), ("cosine", "linear")):
      if a not in by_seed or b not in by_seed:
        continue
      seeds = sorted(set(by_seed[a]) & set(by_seed[b]))
      diff = lambda m: np.array([by_seed[a][s][m] - by_seed[b][s][m] for s in seeds])
      cells = [f"{diff(m).mean():+.4f} ± {diff(m).std(ddof=1):.4f}" for m, _ in METRICS]
      wins = int((diff("probe_accuracy") > 0).sum())
      model = os.path.basename(path).removesuffix(".jsonl")
      print(f"| {model} | {a} - {b} | {cells[0]} | {cells[1]} | {wins}/{len(seeds)} |")


if __name__ == "__main__":
  main()
