r"""GCR's experiment in miniature: accuracy on the trained classes and linear-probe transfer to
held-out ones, for several heads and seeds, in one process (one compile per head).

  python scripts/gcr_transfer.py --config configs/resnet_gcr.py --heads linear,cosine,grassmann \
      --seeds 5 --out experiments/gcr/resnet.jsonl [--set total_steps=300 ...]

For each head ('grassmann' may carry its subspace dimension: 'grassmann:4') the config is
built once with ``:head=...,k=...`` (``normjax.run.build``), the trainer's train step jitted
once, then for seed s: a fresh ``init_state(key(s))``, the train iterator with ``seed=s``,
``total_steps`` steps, ``normjax.run.evaluate`` on the eval split of the trained classes
(``eval_accuracy``), and ``normjax.tools.linear_probe.probe_model`` on the held-out classes
(``probe_accuracy``: a logistic regression on the frozen pooled features). It also reports the
mean squared distance of the held-out test features to their class mean over the mean squared
distance to the global mean (``within_ratio``: lower = tighter classes), on l2-normalised
features. One JSON line per (head, seed) on stdout and ``--out``.
"""

from __future__ import annotations

import argparse
import functools
import json
import time

import jax
import ml_collections
import numpy as np
from flax import nnx
from seeds_in_process import load  # scripts/ is on sys.path when run as a script

from normjax import data as nj_data
from normjax import run
from normjax.tools import linear_probe


def within_ratio(features: np.ndarray, labels: np.ndarray) -> float:
  x = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
  within = np.mean(
    [np.sum((x[labels == c] - x[labels == c].mean(0)) ** 2, 1).mean() for c in set(labels)]
  )
  return float(within / np.sum((x - x.mean(0)) ** 2, 1).mean())


@functools.partial(jax.jit, static_argnums=0)
def features_fn(graph, weights, images):
  return nnx.merge(graph, weights)(images)


def run_head(spec: str, head: str, seeds, overrides, out):
  name, _, k = head.partition(":")
  arg = f"head={name}" + (f",k={k}" if k else "")
  path, _, base = spec.partition(":")
  config = load(f"{path}:{','.join(x for x in (base, arg) if x)}", overrides)
  setup = run.build(config, validate=False)
  train_step, init = jax.jit(setup.train_step), jax.jit(setup.init_state)
  held_out = linear_probe.probe_classes(config)
  for seed in seeds:
    start = time.time()
    state = init(jax.random.key(seed))
    batches = nj_data.train_iterator(config.data, global_batch_size=config.batch_size, seed=seed)
    for _ in range(setup.total_steps):
      state, metrics = train_step(state, next(batches))
    row = {"config": spec, "head": head, "set": overrides, "seed": seed}
    row["train_loss"] = float(metrics["loss"])
    model = setup.model_def.merge(state["params"], state["model_state"], train=False)
    final = run.evaluate(
      run.model_sums(model, setup.task), config.data, batch_size=256, task=setup.task
    )
    row.update({k: float(v) for k, v in final.items()})
    graph, weights = nnx.split(linear_probe.feature_model(model))
    forward = lambda x: features_fn(graph, weights, x)
    probe_data = ml_collections.ConfigDict(config.data.to_dict())
    probe_data.classes = held_out
    info = nj_data.get_info(probe_data)
    train = linear_probe.split_features(forward, probe_data, info.train_split, 256)
    test = linear_probe.split_features(forward, probe_data, info.eval_split, 256)
    row["probe_accuracy"] = linear_probe.fit_probe(train, test)
    row["within_ratio"] = within_ratio(*test)
    row["seconds"] = round(time.time() - start, 1)
    line = json.dumps(row)
    print(line, flush=True)
    if out:
      with open(out, "a") as f:
        f.write(line + "\n")


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--config", required=True)
  parser.add_argument("--heads", default="linear,cosine,grassmann")
  parser.add_argument("--seeds", type=int, default=5)
  parser.add_argument("--first_seed", type=int, default=0)
  parser.add_argument("--out", default=None)
  parser.add_argument("--set", action="append", default=[], help="key=value override")
  args = parser.parse_args()
  seeds = range(args.first_seed, args.first_seed + args.seeds)
  for head in args.heads.split(","):
    run_head(args.config, head, seeds, args.set, args.out)


if __name__ == "__main__":
  main()
