r"""Train one config for several seeds in one process and print the final eval metrics per seed.

  python scripts/seeds_in_process.py --config configs/spdnet_gbwbn.py:bn=gbw --seeds 10 \
      [--out results.jsonl] [--set model.theta=0.5 ...] [--arm NAME] [--domains inverted,noisy]
      [--trace 'conv.*kernel']

For multi-seed tables of seconds-long runs, where starting ``normjax.train`` once per seed
(imports, data, compilation) would cost more than the runs: ``normjax.run.build`` once, the
trainer's ``Setup.train_step`` / ``eval_step`` jitted once, then for seed s = 0..N-1 a fresh
``init_state(key(s))`` and the train iterator with ``seed=s`` (the trainer's own seeding of
init and data order), ``total_steps`` steps, ``normjax.run.evaluate`` on the eval split. No
checkpoints, no workdir. A non-finite loss stops that seed; it is reported as diverged
(``diverged_at_step``) with no accuracy. One JSON line per seed on stdout (and ``--out``).
"""

from __future__ import annotations

import argparse
import json
import re
import time

import jax
import jax.numpy as jnp
import numpy as np

from normjax import data as nj_data
from normjax import run
from normjax.config_args import sibling_config
from normjax.data.corruptions import DOMAINS


def load(spec: str, overrides: list[str]):
  path, _, arg = spec.partition(":")
  config = sibling_config(path, path.rsplit("/", 1)[-1].removesuffix(".py"), arg or None)
  for item in overrides:
    key, _, raw = item.partition("=")
    *parents, leaf = key.split(".")
    node = config
    for p in parents:
      node = node[p]
    old = node[leaf]
    if isinstance(old, bool):
      if raw.lower() not in ("true", "false"):
        raise ValueError(f"--set {key}={raw!r}: expected true or false")
      node[leaf] = raw.lower() == "true"
    else:
      node[leaf] = type(old)(raw) if old is not None else json.loads(raw)
  return config


def traced_norm(params, pattern: str):
  """The total L2 norm of the leaves of ``params`` whose keystr path matches ``pattern``."""
  leaves = [
    leaf
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]
    if re.search(pattern, jax.tree_util.keystr(path))
  ]
  if not leaves:
    raise ValueError(f"--trace {pattern!r} matches no parameter")
  return jnp.sqrt(sum(jnp.sum(jnp.square(leaf.astype(jnp.float32))) for leaf in leaves))


def shifted_eval(batch_sums, domain: str, seed: int):
  """``batch_sums`` on each eval batch's images with the ``domain`` shift (noise: fixed rng)."""
  rng = np.random.default_rng([seed, 1])
  shift = DOMAINS[domain]
  return lambda batch: batch_sums({**batch, "image": shift(np.asarray(batch["image"]), rng)})


class SeedRunner:
  """``runner(seed) -> row``: one seed of ``config`` trained and evaluated (see the module doc).

  ``run.build`` and the jitted train / eval steps are made once, in the constructor; each
  call starts from ``init_state(key(seed))`` with the data order of ``seed``.
  """

  def __init__(self, config, *, trace: str | None = None, domains: tuple[str, ...] = ()):
    self.config, self.trace, self.domains = config, trace, tuple(domains)
    self.setup = run.build(config, validate=False)
    self.train_step = jax.jit(self.setup.train_step)
    self.eval_step = jax.jit(self.setup.eval_step)
    self.init = jax.jit(self.setup.init_state)
    self.norm = jax.jit(lambda params: traced_norm(params, trace)) if trace else None

  def evaluate(self, batch_sums):
    config = self.config
    return run.evaluate(
      batch_sums,
      config.data,
      batch_size=config.get("eval_batch_size", config.batch_size),
      task=self.setup.task,
    )

  def __call__(self, seed: int) -> dict:
    config, setup, row = self.config, self.setup, {}
    start = time.time()
    state = self.init(jax.random.key(seed))
    batches = nj_data.train_iterator(config.data, global_batch_size=config.batch_size, seed=seed)
    if self.trace:
      row["trace_steps"], row["trace_norm"] = [0], [float(self.norm(state["params"]))]
    for step in range(1, setup.total_steps + 1):
      state, metrics = self.train_step(state, next(batches))
      if step % 50 == 0 or step == setup.total_steps:
        if self.trace:
          row["trace_steps"].append(step)
          row["trace_norm"].append(float(self.norm(state["params"])))
        if not np.isfinite(float(metrics["loss"])):
          row["diverged_at_step"] = step
          break
    if "diverged_at_step" not in row:
      sums = lambda b: self.eval_step(state, b)  # noqa: E731
      row.update({k: float(v) for k, v in self.evaluate(sums).items()})
      for domain in self.domains:
        shifted = self.evaluate(shifted_eval(sums, domain, seed))
        row.update({f"{k}/{domain}": float(v) for k, v in shifted.items()})
      if not np.isfinite(row.get("eval_loss", 0.0)):
        row["diverged_at_step"] = setup.total_steps
    row["seconds"] = round(time.time() - start, 2)
    return row


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--config", required=True)
  parser.add_argument("--seeds", type=int, default=10)
  parser.add_argument("--first_seed", type=int, default=0)
  parser.add_argument("--out", default=None)
  parser.add_argument("--set", action="append", default=[], help="key=value override")
  parser.add_argument("--arm", default=None, help="an 'arm' name added to every row")
  parser.add_argument(
    "--domains",
    default="",
    help="comma-separated normjax.data.corruptions.DOMAINS: also evaluate on the eval images "
    "so shifted (keys eval_<metric>/<domain>; image tasks)",
  )
  parser.add_argument(
    "--trace",
    default=None,
    metavar="REGEX",
    help="record the total L2 norm of the parameters whose path (jax keystr) matches REGEX "
    "at step 0 and every 50 steps (trace_steps, trace_norm)",
  )
  args = parser.parse_args()
  unknown = [d for d in filter(None, args.domains.split(",")) if d not in DOMAINS]
  if unknown:
    parser.error(f"--domains {','.join(unknown)}: unknown; choose from {', '.join(DOMAINS)}")
  config = load(args.config, args.set)
  runner = SeedRunner(config, trace=args.trace, domains=list(filter(None, args.domains.split(","))))
  for seed in range(args.first_seed, args.first_seed + args.seeds):
    row = {"config": args.config, "set": args.set, "seed": seed}
    if args.arm:
      row = {"arm": args.arm, **row}
    row.update(runner(seed))
    line = json.dumps(row)
    print(line, flush=True)
    if args.out:
      with open(args.out, "a") as f:
        f.write(line + "\n")


if __name__ == "__main__":
  main()
