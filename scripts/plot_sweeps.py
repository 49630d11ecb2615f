r"""Overlay the summaries of several one-axis sweeps (``normjax.tools.sweep``) in one plot.

  python scripts/plot_sweeps.py --out lr.png adamw=/tmp/sweep_adamw conda=/tmp/sweep_conda

Each ``LABEL=DIR`` names a sweep workdir holding ``summary.json``; the x axis is the first
axis of each sweep (e.g. ``optimizer.learning_rate``), the y axis its metric, seed spread
as error bars, the best point circled.
"""

from __future__ import annotations

import argparse
import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("sweeps", nargs="+", help="LABEL=DIR of a sweep workdir")
  parser.add_argument("--out", required=True)
  parser.add_argument("--ymax", type=float, default=None, help="clip the y axis here")
  args = parser.parse_args()
  fig, ax = plt.subplots(figsize=(5.5, 3.8))
  for item in args.sweeps:
    label, path = item.split("=", 1)
    with open(os.path.join(path, "summary.json")) as f:
      summary = json.load(f)
    x_key = summary["axes"][0]
    rows = sorted((r for r in summary["rows"] if r["mean"] is not None), key=lambda r: r[x_key])
    line = ax.errorbar(
      [r[x_key] for r in rows],
      [r["mean"] for r in rows],
      yerr=[r["std"] or 0.0 for r in rows],
      marker="o",
      capsize=3,
      label=label,
    )
    if summary["best"]:
      ax.plot(
        summary["best"][x_key],
        summary["best"]["mean"],
        "o",
        markersize=12,
        markerfacecolor="none",
        color=line[0].get_color(),
      )
  ax.set_xscale("log")
  ax.set_xlabel(x_key)
  ax.set_ylabel(summary["metric"])
  if args.ymax:
    ax.set_ylim(top=args.ymax)
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(args.out, dpi=120)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
