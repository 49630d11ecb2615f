r"""Variance of GPT-2's residual stream by depth over training: Pre-LN, Post-LN and Peri-LN.

  python scripts/residual_variance.py --set model.depth=6 --set total_steps=300 \
      --out experiments/peri_ln/residual_variance.json \
      --plot experiments/peri_ln/residual_variance.png

Peri-LN's mechanism claim (Kim et al., ICML 2025, arXiv 2502.02732, Sections 3-4): under Pre-LN
the hidden state's variance grows with depth (each block adds an unnormalized branch output to
the residual stream), Post-LN pins it to one after every block, and Peri-LN (a norm on each
branch's output too) grows it slowly and evenly. Each arm is its config with the shared
``--set`` overrides; ``--seed`` fixes init and data order. At each of ``--at`` steps the
eval-mode model runs on one fixed validation batch and records, after the embeddings (and the
embedding norm where there is one) and after every block, the variance over features of each
token's hidden state, averaged over tokens; the final validation loss ends each arm's row.
The per-block path is checked against the model's own forward (same logits) once per arm.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from seeds_in_process import load  # noqa: E402

from normjax import data as nj_data  # noqa: E402
from normjax import run  # noqa: E402

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARMS = {
  "Pre-LN": ("configs/gpt2_layernorm.py", []),
  "Post-LN": ("configs/gpt2_layernorm.py", ["model.placement=post"]),
  "Peri-LN": ("configs/gpt2_perinorm.py", []),
  "Peri-LN + embedding norm": ("configs/gpt2_perinorm.py:embedding_norm=True", []),
}


def stream_variances(model, tokens):
  """[variance after the embeddings, after block 1, ...] and the logits of the same pass."""
  t = model.transformer
  x = model.token_embedding(tokens) + model.position_embedding(jnp.arange(tokens.shape[-1]))
  if t.embedding_norm is not None:
    x = t.embedding_norm(x)
  out = [jnp.mean(jnp.var(x, axis=-1))]
  for block in t.blocks:
    x = block(x, None)
    out.append(jnp.mean(jnp.var(x, axis=-1)))
  h = x if t.final_norm is None else t.final_norm(x)
  wte = model.token_embedding.embedding[...]
  logits = model.head(h) if model.head is not None else jnp.einsum("btc,vc->btv", h, wte)
  return jnp.stack(out), logits


def run_arm(name, spec, overrides, at, seed):
  path, extra = spec
  config = load(os.path.join(_ROOT, path), extra + overrides)
  setup = run.build(config, validate=False)
  step = jax.jit(setup.train_step)
  eval_step = jax.jit(setup.eval_step)
  batch = next(nj_data.eval_iterator(config.data, global_batch_size=config.eval_batch_size))
  tokens = jnp.asarray(batch["inputs"])

  @jax.jit
  def probe(state):
    params = setup.storage.decode(state["params"])
    model = setup.model_def.merge(params, state["model_state"], train=False)
    variances, logits = stream_variances(model, tokens)
    return variances, jnp.max(jnp.abs(logits - model(tokens)))

  state = jax.jit(setup.init_state)(jax.random.key(seed))
  batches = nj_data.train_iterator(config.data, global_batch_size=config.batch_size, seed=seed)
  row = {"arm": name, "config": path, "set": extra + overrides, "seed": seed, "at": [], "var": []}
  for i in range(setup.total_steps + 1):
    if i in at or i == setup.total_steps:
      variances, mismatch = probe(state)
      if float(mismatch) > 1e-4:
        raise AssertionError(f"{name}: the per-block path differs from the model by {mismatch}")
      row["at"].append(i)
      row["var"].append([float(v) for v in variances])
    if i < setup.total_steps:
      state, metrics = step(state, next(batches))
  final = run.evaluate(
    lambda b: eval_step(state, b), config.data, batch_size=config.eval_batch_size, task=setup.task
  )
  row["eval_loss"] = float(final["eval_loss"])
  print(json.dumps(row), flush=True)
  return row


def plot(rows, path):
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  steps = rows[0]["at"]
  fig, axes = plt.subplots(1, len(steps), figsize=(3.2 * len(steps), 3.4), sharey=True)
  for ax, k in zip(np.atleast_1d(axes), range(len(steps))):
    for j, row in enumerate(rows):
      v = row["var"][k]
      ax.plot(range(len(v)), v, marker="o", ms=3, color=f"C{j}", label=row["arm"])
    ax.set_yscale("log")
    ax.set_title(f"step {steps[k]}")
    ax.set_xlabel("after block (0 = embeddings)")
  np.atleast_1d(axes)[0].set_ylabel("residual-stream variance")
  np.atleast_1d(axes)[-1].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  print(f"wrote {path}")


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--set", action="append", default=[], help="key=value, every arm")
  parser.add_argument("--at", default="0,30,100,300", help="steps at which to measure")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--arms", default=",".join(ARMS), help="comma-separated arm names")
  parser.add_argument("--out", default=None)
  parser.add_argument("--plot", default=None)
  args = parser.parse_args()
  at = {int(s) for s in args.at.split(",")}
  unknown = [a for a in args.arms.split(",") if a not in ARMS]
  if unknown:
    parser.error(f"--arms {','.join(unknown)}: unknown; choose from {', '.join(ARMS)}")
  rows = [run_arm(a, ARMS[a], args.set, at, args.seed) for a in args.arms.split(",")]
  if args.out:
    with open(args.out, "w") as f:
      json.dump(rows, f, indent=1)
  if args.plot:
    plot(rows, args.plot)


if __name__ == "__main__":
  main()
