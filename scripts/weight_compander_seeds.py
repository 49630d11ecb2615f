r"""Weight Compander arms over seeds: test accuracy plus the weight statistics the paper claims.

  python scripts/weight_compander_seeds.py --config configs/resnet_weight_compander.py:arm=fixed \
      --seeds 5 --out experiments/weight_compander/results.jsonl

As ``scripts/seeds_in_process.py`` (one build, one compile, seed s = init key s and data order
s), and per seed also, over every Dense/Conv kernel w (Psi(v) for the compander arms, via
``normjax.models.weight_compander.export``): ``max_abs_w`` and ``frac_small_w`` (the fraction
with |w| < 0.01: the "dead" weights the paper says WC reactivates), and a 60-bin histogram of
|w| on [0, 0.6] (``hist``) for the plot.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import numpy as np
from flax import nnx

from normjax import data as nj_data
from normjax import run
from normjax.models import weight_compander as wc
from normjax.optim import labels
from scripts.seeds_in_process import load

BINS = np.linspace(0.0, 0.6, 61)


def kernel_values(setup, state) -> np.ndarray:
  model = setup.model_def.merge(state["params"], state["model_state"], train=False)
  plain = wc.export(model) if isinstance(model, wc.WeightCompander) else model
  flat = nnx.to_flat_state(nnx.state(plain, nnx.Param))
  return np.concatenate(
    [np.abs(np.asarray(v[...])).ravel() for p, v in flat if labels.is_kernel(p)]
  )


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--config", required=True)
  parser.add_argument("--seeds", type=int, default=5)
  parser.add_argument("--out", default=None)
  parser.add_argument("--set", action="append", default=[], help="key=value override")
  args = parser.parse_args()
  config = load(args.config, args.set)
  setup = run.build(config)
  train_step, eval_step = jax.jit(setup.train_step), jax.jit(setup.eval_step)
  init = jax.jit(setup.init_state)
  for seed in range(args.seeds):
    start = time.time()
    state = init(jax.random.key(seed))
    batches = nj_data.train_iterator(config.data, global_batch_size=config.batch_size, seed=seed)
    for _ in range(setup.total_steps):
      state, metrics = train_step(state, next(batches))
    final = run.evaluate(
      lambda b: eval_step(state, b), config.data, batch_size=config.eval_batch_size, task=setup.task
    )
    w = kernel_values(setup, state)
    row = {"config": args.config, "set": args.set, "seed": seed}
    row.update({k: float(v) for k, v in final.items()})
    row.update(
      train_loss=float(metrics["loss"]),
      max_abs_w=float(w.max()),
      frac_small_w=float(np.mean(w < 0.01)),
      hist=np.histogram(np.minimum(w, BINS[-1]), BINS)[0].tolist(),
      seconds=round(time.time() - start, 2),
    )
    line = json.dumps(row)
    print(json.dumps({k: v for k, v in row.items() if k != "hist"}), flush=True)
    if args.out:
      with open(args.out, "a") as f:
        f.write(line + "\n")


if __name__ == "__main__":
  main()
