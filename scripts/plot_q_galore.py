r"""Plot ``scripts/q_galore_arms.py`` rows: final eval loss per arm, and SVDs / gap growths.

  python scripts/plot_q_galore.py --out experiments/q_galore/arms.png rows.jsonl [more.jsonl]

Left: eval loss per arm (each seed a dot, the bar its mean). Right: SVDs per GaLore leaf,
and the refreshes at which the signed and the absolute FIFO mean passed the threshold
(per leaf), whatever rule the arm used.
"""

from __future__ import annotations

import argparse
import collections
import json

import numpy as np


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", required=True)
  parser.add_argument("rows", nargs="+")
  args = parser.parse_args()
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  arms = collections.defaultdict(list)
  for path in args.rows:
    with open(path) as f:
      for line in f:
        row = json.loads(line)
        arms[row["arm"]].append(row)
  names = list(arms)
  fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.2))
  for i, name in enumerate(names):
    losses = [r["eval_loss"] for r in arms[name]]
    ax.bar(i, np.mean(losses), color="C0" if name != "adamw" else "C7", alpha=0.6)
    ax.plot([i] * len(losses), losses, "k.", ms=6)
  lo = min(r["eval_loss"] for rows in arms.values() for r in rows)
  hi = max(r["eval_loss"] for rows in arms.values() for r in rows)
  ax.set_ylim(lo - 0.3 * (hi - lo + 1e-3), hi + 0.3 * (hi - lo + 1e-3))
  ax.set_xticks(range(len(names)), names, rotation=35, ha="right")
  ax.set_ylabel("final eval loss (nats/byte)")
  galore = [n for n in names if arms[n][0].get("leaves")]
  width = 0.27
  for j, (key, label) in enumerate(
    [
      ("svd_count", "SVDs"),
      ("signed_passes", "signed mean >= thr"),
      ("abs_passes", "|cos| mean >= thr"),
    ]
  ):
    values = [np.mean([r[key] / r["leaves"] for r in arms[n]]) for n in galore]
    bx.bar(np.arange(len(galore)) + (j - 1) * width, values, width, label=label)
  bx.set_xticks(range(len(galore)), galore, rotation=35, ha="right")
  bx.set_ylabel("per GaLore leaf (mean over seeds)")
  bx.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(args.out, dpi=120)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
