r"""Q-GaLore's ablation arms on GPT-2, several seeds each, in one process per arm.

  python scripts/q_galore_arms.py --arm galore_official=proj_bits=0,lazy=none,weights=float \
      --seeds 2 [--set total_steps=300 --set optimizer.update_proj_gap=20] [--out rows.jsonl]

For each ``--arm name=ARG`` (``configs/gpt2_qgalore.py:ARG``): ``normjax.run.build`` once,
the trainer's ``Setup.train_step`` jitted once, then per seed a fresh state and data order
(the trainer's seeding), ``total_steps`` steps and ``normjax.run.evaluate``. One JSON line
per (arm, seed): final eval loss, the bytes of the params and the optimizer state, the
``q_galore_stats`` counters (SVDs, gap growths, how often the signed / absolute FIFO mean
passed the threshold, final gaps), the training loss of the last 50 steps, and for
quantized weights the fraction of INT8 codes that changed over the last 50 steps.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import numpy as np

from normjax import data as nj_data
from normjax import run
from normjax.config_args import sibling_config
from normjax.optim import QuantizedArray, q_galore_stats


def nbytes(tree) -> int:
  return int(sum(x.nbytes for x in jax.tree.leaves(tree)))


def codes(params):
  is_q = lambda x: isinstance(x, QuantizedArray)
  return [np.asarray(x.q) for x in jax.tree.leaves(params, is_leaf=is_q) if is_q(x)]


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--arm", action="append", required=True, help="name=config argument")
  parser.add_argument("--seeds", type=int, default=2)
  parser.add_argument("--first_seed", type=int, default=0)
  parser.add_argument("--set", action="append", default=[], help="key=value (JSON value)")
  parser.add_argument("--out", default=None)
  args = parser.parse_args()
  for spec in args.arm:
    name, _, arg = spec.partition("=")
    config = sibling_config("configs/gpt2_qgalore.py", "gpt2_qgalore", arg or None)
    for item in args.set:
      key, _, raw = item.partition("=")
      *parents, leaf = key.split(".")
      node = config
      for p in parents:
        node = node[p]
      node[leaf] = json.loads(raw)
    setup = run.build(config)
    train_step, eval_step = jax.jit(setup.train_step), jax.jit(setup.eval_step)
    init = jax.jit(setup.init_state)
    for seed in range(args.first_seed, args.first_seed + args.seeds):
      start = time.time()
      state = init(jax.random.key(seed))
      row = {"arm": name, "arg": arg, "set": args.set, "seed": seed}
      row.update(params_bytes=nbytes(state["params"]), opt_state_bytes=nbytes(state["opt_state"]))
      batches = nj_data.train_iterator(config.data, global_batch_size=config.batch_size, seed=seed)
      losses, before = [], None
      for step in range(1, setup.total_steps + 1):
        if step == setup.total_steps - 49:
          before = codes(state["params"])
        state, metrics = train_step(state, next(batches))
        if step > setup.total_steps - 50:
          losses.append(float(metrics["loss"]))
      row["train_loss_last50"] = float(np.mean(losses))
      if before:
        after = codes(state["params"])
        changed = sum(int((a != b).sum()) for a, b in zip(after, before))
        row["codes_changed_last50"] = changed / sum(a.size for a in after)
      final = run.evaluate(
        lambda b: eval_step(state, b),
        config.data,
        batch_size=config.get("eval_batch_size", config.batch_size),
        task=setup.task,
      )
      row.update({k: float(v) for k, v in final.items()})
      row.update(q_galore_stats(jax.device_get(state["opt_state"])))
      row["seconds"] = round(time.time() - start, 1)
      line = json.dumps(row)
      print(line, flush=True)
      if args.out:
        with open(args.out, "a") as f:
          f.write(line + "\n")


if __name__ == "__main__":
  main()
