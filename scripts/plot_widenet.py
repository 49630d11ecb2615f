r"""Table and plot of the WideNet arms: validation metric against trainable parameters.

  python scripts/plot_widenet.py [--results experiments/widenet/results] \
      [--out experiments/widenet/widenet.png]

Reads the JSON lines of ``experiments/widenet/run_arms.sh`` (``scripts/seeds_in_process.py``
output, one file per model and arm), counts each arm's trainable parameters from its config
(``normjax.run.build``: the abstract parameters, each shared module once), prints a markdown
table (mean ± std over seeds) and plots metric vs parameters, one panel per model.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
from pathlib import Path

import jax

from normjax import run

ROOT = Path(__file__).resolve().parents[1]
ARMS = ("unshared", "shared_all", "shared_weights", "widenet", "widenet_shared_ln")
LABELS = {
  "unshared": "(a) unshared",
  "shared_all": "(b) all shared (ALBERT)",
  "shared_weights": "(c) shared + individual LN",
  "widenet": "(d) WideNet",
  "widenet_shared_ln": "(e) WideNet, shared LN",
}
METRICS = {"vit": ("eval_accuracy", "test accuracy"), "gpt2": ("eval_loss", "val nats/byte")}


def _seeds_module():
  spec = importlib.util.spec_from_file_location("seeds", ROOT / "scripts" / "seeds_in_process.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def parameter_count(config_spec: str, overrides: list[str]) -> int:
  config = _seeds_module().load(config_spec, overrides)
  setup = run.build(config, validate=False)
  return sum(x.size for x in jax.tree.leaves(setup.model_def.abstract_params))


def mean_std(values):
  mean = sum(values) / len(values)
  var = sum((v - mean) ** 2 for v in values) / max(len(values) - 1, 1)
  return mean, math.sqrt(var)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--results", default=str(ROOT / "experiments/widenet/results"))
  parser.add_argument("--out", default=str(ROOT / "experiments/widenet/widenet.png"))
  args = parser.parse_args()
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
  for ax, (model, (key, label)) in zip(axes, METRICS.items()):
    print(f"\n{model}: {label} (mean ± std over seeds)\n")
    print(f"| arm | trainable parameters | {label} | seeds |\n|---|---:|---:|---:|")
    for arm in ARMS:
      path = Path(args.results) / f"{model}_{arm}.jsonl"
      if not path.exists():
        print(f"| {LABELS[arm]} | | not run | 0 |")
        continue
      rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
      values = [r[key] for r in rows if key in r]
      count = parameter_count(rows[0]["config"], rows[0]["set"])
      mean, std = mean_std(values)
      print(f"| {LABELS[arm]} | {count:,} | {mean:.4f} ± {std:.4f} | {len(values)} |")
      ax.errorbar(count, mean, yerr=std, fmt="o", capsize=3, label=LABELS[arm])
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters (shared modules once)")
    ax.set_ylabel(label)
    ax.set_title({"vit": "ViT on digits", "gpt2": "GPT-2 on pystdlib bytes"}[model])
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(args.out, dpi=120)
  print(f"\nwrote {args.out}")


if __name__ == "__main__":
  main()
