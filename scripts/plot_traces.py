r"""Curves of ``scripts/seeds_in_process.py --trace`` rows: a traced norm over training per arm.

  python scripts/plot_traces.py --out experiments/adamp/kernel_norm.png \
      --ylabel "conv kernel norm" experiments/adamp/results.jsonl:resnet_adamp,resnet_adamw

Each argument is a JSON-lines file, optionally ``:ARM1,ARM2`` to keep only those arms; one
line per arm (the mean over its seeds) with a band from the lowest to the highest seed. Also
prints the mean final value per arm and its ratio to the step-0 value.
"""

from __future__ import annotations

import argparse

import numpy as np
from seed_table import load


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", required=True)
  parser.add_argument("--ylabel", default="norm")
  parser.add_argument("--title", default="")
  parser.add_argument("files", nargs="+")
  args = parser.parse_args()
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(6, 4))
  print("| arm | seeds | start | end | end / start |")
  print("|---|---|---|---|---|")
  for i, (arm, rows) in enumerate(load(args.files).items()):
    rows = [r for r in rows if "trace_norm" in r]
    if not rows:
      continue
    steps = rows[0]["trace_steps"]
    curves = np.array([r["trace_norm"][: len(steps)] for r in rows])
    mean = curves.mean(0)
    ax.plot(steps, mean, color=f"C{i}", label=f"{arm} (n={len(rows)})")
    ax.fill_between(steps, curves.min(0), curves.max(0), color=f"C{i}", alpha=0.2)
    print(f"| {arm} | {len(rows)} | {mean[0]:.2f} | {mean[-1]:.2f} | {mean[-1] / mean[0]:.3f} |")
  ax.set_xlabel("step")
  ax.set_ylabel(args.ylabel)
  ax.set_title(args.title)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(args.out, dpi=120)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
