r"""Table and plot of the MIP experiment (scripts/mip_experiment.py's JSON lines).

  python scripts/plot_mip.py --results experiments/mip/results.jsonl --png experiments/mip/mip.png

Table (markdown on stdout), per parametrization and Adam lr, mean ± std over seeds: the
objective (1 - lambda) CE + lambda MSE averaged over lambda in {0, .25, .5, .75, 1} on the
train split after 100 and 500 steps and at the end; the same on the test split at the end and
at its best step; the test accuracy at lambda = 0.1 at the end; the first evaluated step with
test accuracy >= 90 % at lambda = 0.1; diverged seeds. Plot: the train- and test-split
objective curves at ``--lr``, the final train objective against lr, ||theta(lambda)|| at init.
"""

from __future__ import annotations

import argparse
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

GRID = (0.0, 0.25, 0.5, 0.75, 1.0)
ORDER = ("default", "encoding_only", "theta0_only", "mip")


def load(path):
  runs, mechanism = [], {}
  with open(path) as f:
    for line in f:
      row = json.loads(line)
      if "mechanism" in row:
        mechanism[row["mechanism"]] = row
      else:
        runs.append(row)
  return runs, mechanism


def grid_mean(values, lambdas):
  return float(np.mean([values[lambdas.index(g)] for g in GRID]))


def summarize(row):
  lambdas, curve = row["lambdas"], row["curve"]
  i01 = lambdas.index(0.1)
  test = [grid_mean(c["test_loss"], lambdas) for c in curve]
  reach = [c["step"] for c in curve if c["test_accuracy"][i01] >= 0.9]
  at = {c["step"]: grid_mean(c["train_loss"], lambdas) for c in curve}
  return {
    "train_100": at.get(100, np.nan),
    "train_500": at.get(500, np.nan),
    "train_end": grid_mean(curve[-1]["train_loss"], lambdas),
    "test_end": test[-1],
    "test_best": float(np.nanmin(test)),
    "acc01_end": curve[-1]["test_accuracy"][i01],
    "reach90": reach[0] if reach else None,
    "diverged": row["diverged_at_step"] is not None,
  }


def fmt(values, digits=4):
  values = [v for v in values if v is not None and np.isfinite(v)]
  if not values:
    return "—"
  return f"{np.mean(values):.{digits}f} ± {np.std(values):.{digits}f}"


def table(runs) -> str:
  lines = [
    "| param | lr | train obj. @100 | train obj. @500 | train obj. (end) | test obj. (end) "
    "| test obj. (best) | test acc. λ=0.1 | steps to 90 % (λ=0.1) | diverged |",
    "|---|---|---|---|---|---|---|---|---|---|",
  ]
  lrs = sorted({r["lr"] for r in runs})
  for param in ORDER:
    for lr in lrs:
      rows = [summarize(r) for r in runs if r["param"] == param and r["lr"] == lr]
      if not rows:
        continue
      reach = [r["reach90"] for r in rows]
      reach_text = fmt([x for x in reach if x is not None], 0) + (
        f" ({sum(x is None for x in reach)} never)" if None in reach else ""
      )
      lines.append(
        f"| {param} | {lr:g} | {fmt([r['train_100'] for r in rows])} | "
        f"{fmt([r['train_500'] for r in rows])} | {fmt([r['train_end'] for r in rows])} | "
        f"{fmt([r['test_end'] for r in rows])} | {fmt([r['test_best'] for r in rows])} | "
        f"{fmt([r['acc01_end'] for r in rows])} | {reach_text} | "
        f"{sum(r['diverged'] for r in rows)}/{len(rows)} |"
      )
  return "\n".join(lines)


def plot(runs, mechanism, lr, path):
  fig, axes = plt.subplots(1, 4, figsize=(20, 4.2))
  colors = dict(zip(ORDER, ("tab:red", "tab:orange", "tab:purple", "tab:blue")))
  for ax, split in zip(axes[:2], ("train", "test")):
    for param in ORDER:
      rows = [r for r in runs if r["param"] == param and r["lr"] == lr]
      if not rows:
        continue
      steps = [c["step"] for c in rows[0]["curve"]]
      ys = np.array(
        [[grid_mean(c[f"{split}_loss"], r["lambdas"]) for c in r["curve"]] for r in rows]
      )
      m, s = ys.mean(0), ys.std(0)
      ax.plot(steps, m, color=colors[param], label=param)
      ax.fill_between(steps, m - s, m + s, color=colors[param], alpha=0.2)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_title(f"{split} objective, mean over λ grid (Adam lr {lr:g})")
    ax.legend()
  ax = axes[2]
  lrs = sorted({r["lr"] for r in runs})
  for param in ORDER:
    vals = [
      [summarize(r)["train_end"] for r in runs if r["param"] == param and r["lr"] == x] for x in lrs
    ]
    m = [np.mean(v) if v else np.nan for v in vals]
    s = [np.std(v) if v else np.nan for v in vals]
    ax.errorbar(lrs, m, yerr=s, color=colors[param], marker="o", capsize=3, label=param)
  ax.set_xscale("log")
  ax.set_yscale("log")
  ax.set_xlabel("Adam learning rate")
  ax.set_title("final train objective (mean over λ grid)")
  ax.legend()
  ax = axes[3]
  for param, row in mechanism.items():
    ax.plot(row["lambdas"], row["theta_norm"], color=colors[param], marker="o", label=param)
  ax.set_xlabel("λ")
  ax.set_title("||θ(λ)|| at initialisation (seed 0)")
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=110)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--results", required=True)
  parser.add_argument("--png", required=True)
  parser.add_argument("--lr", type=float, default=1e-3)
  args = parser.parse_args()
  runs, mechanism = load(args.results)
  print(table(runs))
  plot(runs, mechanism, args.lr, args.png)


if __name__ == "__main__":
  main()
