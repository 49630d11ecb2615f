r"""Accuracy against corruption severity for alpha-BN: table and plot of alpha_bn_eval rows.

  python scripts/plot_alpha_bn.py experiments/alpha_bn/results.jsonl \
      experiments/alpha_bn/accuracy_vs_severity.png

Rows are ``python -m normjax.tools.alpha_bn_eval --severities ... --out`` lines (one per run,
severity, corruption, alpha). Prints a markdown table (mean ± s.e. over the runs, n runs) per
corruption x severity x alpha; the plot has one panel per corruption, one line per alpha, and
the clean accuracy (source statistics) as a dashed line.
"""

from __future__ import annotations

import collections
import json
import sys

import numpy as np


def mean_se(values):
  values = np.asarray(values, float)
  se = values.std(ddof=1) / np.sqrt(len(values)) if len(values) > 1 else 0.0
  return values.mean(), se


def main(rows_path: str, png: str):
  cells = collections.defaultdict(list)
  with open(rows_path) as f:
    for line in filter(str.strip, f):
      r = json.loads(line)
      cells[(r["corruption"], r["severity"], r["alpha"])].append(r["accuracy"])
  corruptions = [c for c in dict.fromkeys(k[0] for k in cells) if c != "clean"]
  alphas = sorted({k[2] for k in cells})
  severities = sorted({k[1] for k in cells})
  runs = len(cells[("clean", severities[0], alphas[0])])
  print("| corruption | severity | " + " | ".join(f"alpha={a:g}" for a in alphas) + " |")
  print("|---|---|" + "---|" * len(alphas))
  clean = {a: mean_se(cells[("clean", severities[0], a)]) for a in alphas}
  print("| clean | - | " + " | ".join(f"{m:.4f} ± {s:.4f}" for m, s in clean.values()) + " |")
  for c in corruptions:
    for sev in severities:
      stats = [mean_se(cells[(c, sev, a)]) for a in alphas]
      print(f"| {c} | {sev} | " + " | ".join(f"{m:.4f} ± {s:.4f}" for m, s in stats) + " |")
  print(f"\n{runs} trained runs per cell (mean ± s.e.)")
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, len(corruptions), figsize=(3.6 * len(corruptions), 3.4), sharey=True)
  for ax, c in zip(np.atleast_1d(axes), corruptions):
    for j, a in enumerate(alphas):
      stats = [mean_se(cells[(c, sev, a)]) for sev in severities]
      label = {0.0: "source stats (a=0)", 1.0: "test batch (a=1)"}.get(a, f"alpha-BN (a={a:g})")
      ax.errorbar(severities, [m for m, _ in stats], yerr=[s for _, s in stats], marker="o",
                  ms=3, capsize=2, color=f"C{j}", label=label)  # fmt: skip
    ax.axhline(clean[0.0][0], color="k", ls="--", lw=0.8)
    ax.set_title(c)
    ax.set_xlabel("severity")
    ax.set_xticks(severities)
  np.atleast_1d(axes)[0].set_ylabel("test accuracy")
  np.atleast_1d(axes)[0].legend(fontsize=7)
  fig.suptitle(f"BatchNorm ResNet on corrupted digits, test batches of 64, {runs} runs")
  fig.tight_layout()
  fig.savefig(png, dpi=110)
  print(f"wrote {png}")


if __name__ == "__main__":
  main(*sys.argv[1:3])
