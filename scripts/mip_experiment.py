r"""The MIP experiment (experiments/mip): parametrizations x Adam learning rates x seeds of
configs/hypernet_mip.py, with loss curves and per-lambda evaluations, in one process.

  python scripts/mip_experiment.py --out experiments/mip/results.jsonl \
      [--params mip,default,encoding_only,theta0_only] [--lrs 1e-4,3e-4,1e-3,3e-3] \
      [--seeds 3] [--steps 3000] [--eval_every 100]

For each (parametrization, lr): ``normjax.run.build`` of the config, the trainer's own
``Setup.train_step`` and ``init_state``, ``jax.vmap``-ed over the seeds (seed s: init key
``key(s)`` and the train iterator with ``seed=s``, as ``normjax.train``), so the seeds train
side by side in one compiled step. Every ``eval_every`` steps, for each seed: the objective
(1 - lambda) CE + lambda MSE and the accuracy on the whole train and test splits at lambda in
``LAMBDAS`` (test: also CE at lambda = 0.1). A seed whose loss turns non-finite is marked
diverged at that step. One JSON line per (parametrization, lr, seed) with the curves; also
the norm of theta(lambda) at init over a lambda grid (``mechanism`` lines).
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from normjax import data as nj_data
from normjax import run
from normjax.config_args import sibling_config
from normjax.tasks.classify_and_reconstruct import per_lambda

LAMBDAS = (0.0, 0.1, 0.25, 0.5, 0.75, 1.0)
GRID = (0.0, 0.25, 0.5, 0.75, 1.0)  # the trainer's eval grid: final loss averaged over it


def split_arrays(config, split: str):
  """All images and labels of a split as two arrays (eval order)."""
  data = dict(config.data.to_dict(), eval_split=split)
  images, labels = [], []
  for batch in nj_data.eval_iterator(data, global_batch_size=512):
    real = batch["mask"] > 0
    images.append(batch["image"][real])
    labels.append(batch["label"][real])
  return jnp.asarray(np.concatenate(images)), jnp.asarray(np.concatenate(labels))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", required=True)
  parser.add_argument("--params", default="mip,default,encoding_only,theta0_only")
  parser.add_argument("--lrs", default="1e-4,3e-4,1e-3,3e-3")
  parser.add_argument("--seeds", type=int, default=3)
  parser.add_argument("--steps", type=int, default=3000)
  parser.add_argument("--eval_every", type=int, default=100)
  args = parser.parse_args()
  seeds = list(range(args.seeds))
  lams = jnp.asarray(LAMBDAS)
  with open(args.out, "w"):
    pass

  def write(row):
    with open(args.out, "a") as f:
      f.write(json.dumps(row) + "\n")

  splits = None
  for lr in [float(x) for x in args.lrs.split(",")]:
    for param in args.params.split(","):
      start = time.time()
      config = sibling_config(
        __file__.replace("scripts/", "configs/"),
        "hypernet_mip",
        f"param={param},lr={lr},steps={args.steps}",
      )
      setup = run.build(config, validate=False)
      if splits is None:
        splits = {s: split_arrays(config, s) for s in ("train", "test")}
      states = jax.jit(jax.vmap(setup.init_state))(jnp.stack([jax.random.key(s) for s in seeds]))
      if param in ("mip", "default") and lr == float(args.lrs.split(",")[0]):
        model = setup.model_def.merge(
          jax.tree.map(lambda x: x[0], states["params"]),
          jax.tree.map(lambda x: x[0], states["model_state"]),
          train=False,
        )
        grid = np.linspace(0, 1, 11)
        thetas = model.thetas(jnp.asarray(grid))
        norms = np.sqrt(
          sum(
            np.square(np.asarray(x)).reshape(len(grid), -1).sum(1) for x in jax.tree.leaves(thetas)
          )
        )
        write({"mechanism": param, "lambdas": grid.tolist(), "theta_norm": norms.tolist()})
      step_fn = jax.jit(jax.vmap(setup.train_step), donate_argnums=(0,))

      @jax.jit
      def evaluate(states, images, labels):
        def one(params, model_state):
          model = setup.model_def.merge(params, model_state, train=False)
          terms = per_lambda(model.forward(images, lams), {"image": images, "label": labels})
          return {k: v.mean(-1) for k, v in terms.items()}

        return jax.vmap(one)(states["params"], states["model_state"])

      iters = [
        nj_data.train_iterator(config.data, global_batch_size=config.batch_size, seed=s)
        for s in seeds
      ]
      rows = [{"param": param, "lr": lr, "seed": s, "curve": [], "train_loss": []} for s in seeds]
      diverged = [None] * len(seeds)
      window = np.zeros((len(seeds),))
      for step in range(1, args.steps + 1):
        batch = jax.tree.map(lambda *xs: np.stack(xs), *[next(it) for it in iters])
        states, metrics = step_fn(states, batch)
        window += np.asarray(metrics["loss"])
        if step % args.eval_every == 0:
          for i in range(len(seeds)):
            rows[i]["train_loss"].append(float(window[i] / args.eval_every))
          window[:] = 0
          ev = {s: jax.device_get(evaluate(states, *splits[s])) for s in ("train", "test")}
          for i in range(len(seeds)):
            if diverged[i] is None and not np.isfinite(rows[i]["train_loss"][-1]):
              diverged[i] = step
            rows[i]["curve"].append(
              {
                "step": step,
                **{f"{s}_loss": ev[s]["loss"][i].tolist() for s in ev},
                **{f"{s}_accuracy": ev[s]["correct"][i].tolist() for s in ev},
              }
            )
      for i, row in enumerate(rows):
        row["diverged_at_step"] = diverged[i]
        row["lambdas"] = list(LAMBDAS)
        row["seconds"] = round((time.time() - start) / len(seeds), 1)
        write(row)
      print(f"{param} lr={lr:g}: {time.time() - start:.0f} s", flush=True)


if __name__ == "__main__":
  main()
