r"""Markdown table (and a bar plot) of per-seed arm rows: mean ± s.e. per arm and metric.

  python scripts/seed_table.py --metrics eval_accuracy,eval_loss \
      experiments/baselines/results.jsonl:vit_layernorm experiments/powernorm/results.jsonl \
      [--plot experiments/powernorm/accuracy.png --title "ViT on digits"]

Each argument is a JSON-lines file of ``scripts/seeds_in_process.py --arm`` rows (what
``scripts/arm.sh`` appends), optionally ``:ARM1,ARM2`` to keep only those arms. Arms are
listed in argument order. A row with ``diverged_at_step`` counts as diverged, not as a value.
``--plot``: one panel per metric, one bar per arm (mean ± s.e., every seed as a dot).
"""

from __future__ import annotations

import argparse
import json

import numpy as np


def load(specs: list[str]) -> dict[str, list[dict]]:
  arms: dict[str, list[dict]] = {}
  for spec in specs:
    path, _, keep = spec.partition(":")
    wanted = set(keep.split(",")) if keep else None
    with open(path) as f:
      for line in f:
        if line.strip():
          row = json.loads(line)
          if wanted is None or row["arm"] in wanted:
            arms.setdefault(row["arm"], []).append(row)
  return arms


def summary(rows: list[dict], metric: str, digits: int) -> str:
  values = [r[metric] for r in rows if r.get("diverged_at_step") is None and metric in r]
  diverged = len(rows) - len(values)
  if not values:
    return f"— ({diverged} diverged)"
  mean = np.mean(values)
  se = np.std(values, ddof=1) / np.sqrt(len(values)) if len(values) > 1 else 0.0
  text = f"{mean:.{digits}f} ± {se:.{digits}f}"
  return text + (f" ({diverged} diverged)" if diverged else "")


def plot_against(ax, arms, metric, xs, args):
  """mean ± s.e. of ``metric`` at each arm's x (arms without an x are left out)."""
  points = []
  for arm, rows in arms.items():
    values = [r[metric] for r in rows if metric in r and r.get("diverged_at_step") is None]
    if arm in xs and values:
      se = np.std(values, ddof=1) / np.sqrt(len(values)) if len(values) > 1 else 0
      points.append((xs[arm], np.mean(values), se, arm))
  points.sort()
  x, y, e, names = zip(*points)
  ax.errorbar(x, y, yerr=e, marker="o", capsize=3)
  for xi, yi, name in zip(x, y, names):
    ax.annotate(name, (xi, yi), fontsize=7, xytext=(3, -10), textcoords="offset points")
  if args.logx:
    ax.set_xscale("log")
  ax.set_xlabel(args.xlabel)
  ax.set_ylabel(metric)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--metrics", default="eval_accuracy")
  parser.add_argument("--digits", type=int, default=4)
  parser.add_argument("--plot", default=None)
  parser.add_argument("--title", default="")
  parser.add_argument(
    "--xs", default=None, help="ARM=X,...: plot each metric against X (mean ± s.e.) instead of bars"
  )
  parser.add_argument("--xlabel", default="")
  parser.add_argument("--logx", action="store_true")
  parser.add_argument("files", nargs="+")
  args = parser.parse_args()
  arms = load(args.files)
  metrics = args.metrics.split(",")
  print("| arm | seeds | " + " | ".join(metrics) + " | per seed (" + metrics[0] + ") |")
  print("|---|---|" + "---|" * len(metrics) + "---|")
  for arm, rows in arms.items():
    cells = " | ".join(summary(rows, m, args.digits) for m in metrics)
    seeds = ", ".join(
      f"{r[metrics[0]]:.{args.digits}f}" if metrics[0] in r else "diverged" for r in rows
    )
    print(f"| {arm} | {len(rows)} | {cells} | {seeds} |")
  if args.plot:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(metrics), figsize=(1.4 * len(arms) * len(metrics) + 2, 3.6))
    xs = dict(item.split("=") for item in args.xs.split(",")) if args.xs else None
    for ax, metric in zip(np.atleast_1d(axes), metrics):
      if xs:
        plot_against(ax, arms, metric, {a: float(x) for a, x in xs.items()}, args)
        continue
      for i, rows in enumerate(arms.values()):
        values = [r[metric] for r in rows if metric in r and r.get("diverged_at_step") is None]
        se = np.std(values, ddof=1) / np.sqrt(len(values)) if len(values) > 1 else 0
        ax.bar(i, np.mean(values), yerr=se, capsize=3, color=f"C{i}")
        ax.plot([i] * len(values), values, "k.", ms=4)
      lo = min(r[metric] for rows in arms.values() for r in rows if metric in r)
      hi = max(r[metric] for rows in arms.values() for r in rows if metric in r)
      ax.set_ylim(lo - 0.15 * (hi - lo + 1e-9), hi + 0.15 * (hi - lo + 1e-9))
      ax.set_xticks(range(len(arms)), list(arms), rotation=25, ha="right", fontsize=8)
      ax.set_ylabel(metric)
    fig.suptitle(args.title)
    fig.tight_layout()
    fig.savefig(args.plot, dpi=120)
    print(f"wrote {args.plot}")


if __name__ == "__main__":
  main()
