r"""Plot of experiments/soft: accuracy per attention (seeds as dots) and time / memory vs N.

  python scripts/plot_soft.py --seeds experiments/soft/seeds.jsonl \
      --bench experiments/soft/bench.json --out experiments/soft/soft.png

Left: test accuracy of each arm (``scripts/soft_experiment.py`` rows), mean bar and one dot per
seed. Middle / right: forward+backward time and XLA temporary memory of one attention call
(``scripts/bench_attention.py --json``) against the number of tokens N, log-log, with the
slopes 1 and 2 for reference.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--seeds", required=True)
  parser.add_argument("--bench", required=True)
  parser.add_argument("--out", required=True)
  args = parser.parse_args()
  rows = [json.loads(line) for line in open(args.seeds) if line.strip()]
  accuracy = defaultdict(list)
  for row in rows:
    accuracy[row["arm"]].append(row["accuracy"])
  bench = json.load(open(args.bench))
  fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
  names = list(accuracy)
  for i, name in enumerate(names):
    values = accuracy[name]
    axes[0].bar(i, sum(values) / len(values), color="0.8")
    axes[0].plot([i] * len(values), values, "k.", ms=8)
  axes[0].set_xticks(range(len(names)), names, rotation=20)
  low = min(min(v) for v in accuracy.values())
  axes[0].set_ylim(max(0.0, low - 0.05), 1.0)
  axes[0].set_ylabel("test accuracy (digits)")
  axes[0].set_title("accuracy, one dot per seed")
  kinds = sorted({r["kind"] for r in bench}, key=[r["kind"] for r in bench].index)
  for ax, key, label in (
    (axes[1], "forward_backward_s", "fwd+bwd time (s)"),
    (axes[2], "forward_backward_temp_bytes", "fwd+bwd XLA temp memory (bytes)"),
  ):
    for kind in kinds:
      points = sorted((r["tokens"], r[key]) for r in bench if r["kind"] == kind)
      ax.loglog(*zip(*points), "o-", label=kind)
    n0, n1 = min(r["tokens"] for r in bench), max(r["tokens"] for r in bench)
    base = min(r[key] for r in bench if r["tokens"] == n0)
    for slope, style in ((1, ":"), (2, "--")):
      ax.loglog([n0, n1], [base, base * (n1 / n0) ** slope], "k" + style, lw=1, label=f"~N^{slope}")
    ax.set_xlabel("tokens N")
    ax.set_ylabel(label)
    ax.legend(fontsize=7)
  axes[1].set_title("one attention call (CPU)")
  axes[2].set_title("memory of one attention call")
  fig.tight_layout()
  fig.savefig(args.out, dpi=110)


if __name__ == "__main__":
  main()
