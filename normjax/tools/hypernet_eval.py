r"""Per-lambda evaluation of a trained lambda hypernetwork (configs/hypernet_mip.py, MIP).

  python -m normjax.train --config configs/hypernet_mip.py --workdir /tmp/hyper_mip
  python -m normjax.tools.hypernet_eval --workdir /tmp/hyper_mip [--lambdas 0,0.1,0.5,0.9,1] \
      [--step N] [--out results.json]

Loads the run's config and checkpoint (latest, or ``--step``) and, for each lambda, predicts
the primary network's parameters theta(lambda) and evaluates it on the whole eval split: the
cross-entropy, the reconstruction MSE, the trained objective (1 - lambda) CE + lambda MSE,
top-1 accuracy, and ||theta(lambda)||_2 with ||theta(lambda) - theta_0||_2 (the mechanism the
paper is about: how the predicted weights' size moves with the input). The trainer's
``eval_loss`` is the mean of the ``loss`` column over its grid (default lambdas).
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from normjax import cli
from normjax import data as nj_data
from normjax.checkpoint import load_run, read_config
from normjax.tasks.classify_and_reconstruct import per_lambda

DEFAULT_LAMBDAS = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)
COLUMNS = ("loss", "ce", "mse", "accuracy", "theta_norm", "delta_norm")


def check_lambdas(lambdas) -> tuple[float, ...]:
  lambdas = tuple(float(x) for x in lambdas)
  if not lambdas or any(not np.isfinite(x) or not 0.0 <= x <= 1.0 for x in lambdas):
    raise ValueError(f"--lambdas {list(lambdas)}: give one or more loss weights in [0, 1]")
  return lambdas


def stacked_norm(tree) -> np.ndarray:
  """(G,) L2 norms of a parameter tree whose leaves stack G trees on their first axis."""
  squares = [
    np.square(np.asarray(x, np.float64)).reshape(x.shape[0], -1).sum(1)
    for x in jax.tree.leaves(tree)
  ]
  return np.sqrt(sum(squares))


def evaluate(workdir: str, *, lambdas=DEFAULT_LAMBDAS, step: int | None = None) -> dict:
  """``{lambda: {column: value}}`` over the eval split of the run in ``workdir``."""
  lambdas = check_lambdas(lambdas)
  config = read_config(workdir)
  if config.model.get("name") != "lambda_hypernet":
    raise ValueError(
      f"--workdir {workdir!r}: its model.name={config.model.get('name')!r}; this command "
      f"evaluates a lambda_hypernet run (configs/hypernet_mip.py)"
    )
  model = load_run(workdir, step)[1]
  graph, state = nnx.split(model)
  lams = jnp.asarray(lambdas, model.dtype)

  @jax.jit
  def batch_terms(state, batch):
    model = nnx.merge(graph, state)
    terms = per_lambda(model.forward(batch["image"], lams), batch)
    mask = batch["mask"].astype(terms["loss"].dtype)
    return {k: (v * mask).sum(-1) for k, v in terms.items()}, mask.sum()

  totals, count = None, 0.0
  batch_size = int(config.get("eval_batch_size", config.batch_size))
  for batch in nj_data.eval_iterator(config.data, global_batch_size=batch_size):
    sums, n = jax.device_get(batch_terms(state, jax.tree.map(jnp.asarray, batch)))
    totals = sums if totals is None else {k: totals[k] + sums[k] for k in sums}
    count += float(n)
  thetas = model.thetas(lams)
  theta0 = nnx.state(model.hypernet.primary, nnx.Param)
  delta = jax.tree.map(lambda t, t0: t - t0[None], thetas, theta0)
  theta_norm, delta_norm = stacked_norm(thetas), stacked_norm(delta)
  out = {}
  for i, lam in enumerate(lambdas):
    out[lam] = {
      "loss": float(totals["loss"][i]) / count,
      "ce": float(totals["ce"][i]) / count,
      "mse": float(totals["mse"][i]) / count,
      "accuracy": float(totals["correct"][i]) / count,
      "theta_norm": float(theta_norm[i]),
      "delta_norm": float(delta_norm[i]),
    }
  return out


def format_table(results: dict) -> str:
  rows = [
    "| lambda | (1-l) CE + l MSE | CE | MSE | accuracy | ||theta|| | ||theta - theta_0|| |",
    "|---|---|---|---|---|---|---|",
  ]
  for lam, r in results.items():
    rows.append(
      f"| {lam:g} | {r['loss']:.4f} | {r['ce']:.4f} | {r['mse']:.4f} | {r['accuracy']:.4f} | "
      f"{r['theta_norm']:.3f} | {r['delta_norm']:.3f} |"
    )
  return "\n".join(rows)


def main():
  """The command (flags are defined here, so importing this module defines none)."""
  from absl import app, flags, logging

  workdir = flags.DEFINE_string("workdir", None, "Workdir of a configs/hypernet_mip.py run.")
  lambdas = flags.DEFINE_list(
    "lambdas", [f"{x:g}" for x in DEFAULT_LAMBDAS], "Loss weights lambda in [0, 1]."
  )
  step = flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
  out = flags.DEFINE_string("out", None, "Also write the results as JSON here.")
  verbose = cli.define_verbose_flag()

  def run_command(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # orbax's info lines

    def body():
      if not workdir.value:
        raise ValueError("--workdir is required (a configs/hypernet_mip.py run)")
      try:
        chosen = [float(x) for x in lambdas.value]
      except ValueError:
        raise ValueError(f"--lambdas {lambdas.value}: not numbers") from None
      results = evaluate(workdir.value, lambdas=chosen, step=step.value)
      print(f"eval split, checkpoint in {os.path.abspath(workdir.value)}")
      print(format_table(results))
      if out.value:
        with open(out.value, "w") as f:
          json.dump({str(k): v for k, v in results.items()}, f, indent=1)

    cli.guarded("normjax.tools.hypernet_eval", body, verbose_flag=verbose.value)

  app.run(run_command)


if __name__ == "__main__":
  main()
