r"""normjax's training step vs a minimal hand-written flax + optax step of the same model.

  python scripts/bench_train_step.py [--repeats 7] [--steps 20]

For each foundation config (ViT on digits, GPT-2 on pystdlib, at their default sizes) both
steps are built from the same model class, optimizer and batch, jitted with the state
donated, and timed alternately in one process (median over repeats of the mean time of
``--steps`` consecutive steps). The baseline is the idiomatic fast NNX pattern:
``nnx.split`` once, ``nnx.merge`` inside ``jax.jit``, ``optax`` update, nothing else.
normjax's step adds its pure-dict state, metrics (accuracy, grad norm, learning rate) and
the model-state carry. Target: ratio <= 1.05.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import jax
import optax
from flax import nnx

from normjax import data as nj_data
from normjax import run
from normjax.config_args import sibling_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def baseline_step_fn(graphdef, tx, task):
  def step(params, rest, opt_state, batch):
    def loss_fn(params):
      model = nnx.merge(graphdef, params, rest)
      x, y = (
        (batch["image"], batch["label"])
        if task == "classification"
        else (batch["inputs"], batch["targets"])
      )
      loss = optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()
      return loss, nnx.split(model, nnx.Param, ...)[2]

    (loss, rest), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), rest, opt_state, loss

  return jax.jit(step, donate_argnums=(0, 1, 2))


def time_steps(fn, steps):
  fn()  # the result of the previous call may still be in flight
  t = time.perf_counter()
  for _ in range(steps):
    out = fn()
  jax.block_until_ready(out)
  return (time.perf_counter() - t) / steps


def bench(name, repeats, steps):
  setup = run.build(sibling_config(str(CONFIGS / "x.py"), name))
  config, info, tx, make = setup.config, setup.info, setup.tx, setup.make
  batch = jax.device_put(
    next(nj_data.train_iterator(config.data, global_batch_size=config.batch_size, seed=0))
  )

  # normjax: the trainer's own step.
  train_step = jax.jit(setup.train_step, donate_argnums=(0,))
  state = {"s": jax.jit(setup.init_state)(jax.random.key(0))}

  def run_normjax():
    state["s"], metrics = train_step(state["s"], batch)
    return metrics["loss"]

  # baseline: minimal NNX + optax.
  model = make(rngs=nnx.Rngs(0))
  model.train()
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  base = {"p": params, "r": rest, "o": tx.init(params)}
  step = baseline_step_fn(graphdef, tx, info.task)

  def run_baseline():
    base["p"], base["r"], base["o"], loss = step(base["p"], base["r"], base["o"], batch)
    return loss

  times = {"normjax": [], "baseline": []}
  runs = [("baseline", run_baseline), ("normjax", run_normjax)]
  for i in range(repeats):  # alternate the order so neither always runs first
    for key, fn in runs if i % 2 == 0 else runs[::-1]:
      times[key].append(time_steps(fn, steps))
  med = {k: statistics.median(v) for k, v in times.items()}
  # The work XLA compiled for each step, independent of machine noise.
  cost_nj = train_step.lower(state["s"], batch).compile().cost_analysis()
  cost_base = step.lower(base["p"], base["r"], base["o"], batch).compile().cost_analysis()
  print(
    f"{name:16s} batch {config.batch_size:4d}  baseline {med['baseline'] * 1e3:8.2f} ms  "
    f"normjax {med['normjax'] * 1e3:8.2f} ms  ratio {med['normjax'] / med['baseline']:.3f}  "
    f"(compiled flops ratio {cost_nj['flops'] / cost_base['flops']:.4f}, bytes ratio "
    f"{cost_nj['bytes accessed'] / cost_base['bytes accessed']:.4f})",
    flush=True,
  )
  return med["normjax"] / med["baseline"]


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--repeats", type=int, default=7)
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--configs", default="vit_layernorm,gpt2_layernorm")
  args = parser.parse_args()
  print(f"jax {jax.__version__} on {jax.default_backend()} ({jax.device_count()} devices)")
  for name in args.configs.split(","):
    bench(name, args.repeats, args.steps)


if __name__ == "__main__":
  main()
