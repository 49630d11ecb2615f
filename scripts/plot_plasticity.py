r"""Plasticity curves of ``normjax.tools.plasticity`` runs: training accuracy at each task's end
and the kernels' effective learning rate over steps, mean over seeds, one line per arm.

  python scripts/plot_plasticity.py --out experiments/nap/plasticity.png \
      LN+NaP=/tmp/napexp/permute_pixels_layernorm_nap LN=/tmp/napexp/permute_pixels_layernorm_adam

Each ``NAME=DIR`` is a ``--seeds N`` workdir (``seed_*/metrics.jsonl``) or a one-seed workdir.
"""

from __future__ import annotations

import argparse
import glob
import json
import os

import numpy as np


def seed_dirs(directory: str) -> list[str]:
  found = sorted(glob.glob(os.path.join(directory, "seed_*")))
  return found or [directory]


def curves(directory: str):
  task_acc, steps, lrs = [], None, []
  for d in seed_dirs(directory):
    with open(os.path.join(d, "metrics.jsonl")) as f:
      rows = [json.loads(line) for line in f]
    task_acc.append([r["train_accuracy"] for r in rows if "task_end" in r])
    logged = [r for r in rows if "effective_lr" in r]
    steps = [r["step"] for r in logged]
    lrs.append([r["effective_lr"] for r in logged])
  return np.array(task_acc), np.array(steps), np.array(lrs)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", required=True)
  parser.add_argument("--title", default="")
  parser.add_argument("runs", nargs="+", help="NAME=DIR")
  args = parser.parse_args()
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
  for item in args.runs:
    name, _, directory = item.partition("=")
    acc, steps, lrs = curves(directory)
    tasks = np.arange(acc.shape[1])
    se = acc.std(0, ddof=1) / np.sqrt(len(acc)) if len(acc) > 1 else 0 * acc[0]
    left.errorbar(tasks, acc.mean(0), yerr=se, marker="o", ms=3, capsize=2, label=name)
    right.plot(steps, lrs.mean(0), label=name)
  left.set(xlabel="task", ylabel="train accuracy at task end", title=args.title)
  right.set(xlabel="step", ylabel="||ΔW|| / ||W|| per step (kernels)", yscale="log")
  left.legend(fontsize=7)
  right.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(args.out, dpi=120)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
