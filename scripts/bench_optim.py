r"""Update-step time of normjax's optimizers against optax.adamw, GPT-2-small-shaped tree.

  python scripts/bench_optim.py                 # GPT-2 small (124M parameters)
  python scripts/bench_optim.py --width 384     # a smaller tree for a quick look

One process, one parameter tree (hand-built shapes: wte (50257, d), wpe (1024, d), 12
blocks of ln_1, attn.c_attn (d, 3d), attn.c_proj (d, d), ln_2, mlp.c_fc (d, 4d),
mlp.c_proj (4d, d) with biases, ln_f), float32. The timed step is what a trainer runs
after the backward pass: ``update`` + ``apply_updates``, jitted, with params and
optimizer state donated. Each optimizer: compile, warm up, then ``--repeats`` timings
of ``--steps`` steps each (Conda: one step per timing); the median per step is
reported, and its ratio to adamw's.

Conda refreshes its basis (SVDs) when ``count % update_proj_gap == 0``. Both branches of
that ``lax.cond`` are timed (the step count is an argument of the timed function, so
nothing is constant-folded) and amortised over one period T = update_proj_gap:
``((T - 1) t_plain + t_refresh) / T``.
"""
from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from normjax.optim import labels
from normjax.optim.adamp import adamp, sgdp
from normjax.optim.conda import conda
from normjax.optim.nap import normalize_and_project


def gpt2_params(width=768, depth=12, vocab=50257, context=1024, seed=0):
  rng = np.random.default_rng(seed)
  dense = lambda i, o: {"kernel": rng.standard_normal((i, o), np.float32) * 0.02,
                        "bias": np.zeros((o,), np.float32)}
  norm = lambda: {"scale": np.ones((width,), np.float32), "bias": np.zeros((width,), np.float32)}
  blocks = {str(i): {"ln_1": norm(),
                     "attn": {"c_attn": dense(width, 3 * width), "c_proj": dense(width, width)},
                     "ln_2": norm(),
                     "mlp": {"c_fc": dense(width, 4 * width), "c_proj": dense(4 * width, width)}}
            for i in range(depth)}
  params = {"wte": {"embedding": rng.standard_normal((vocab, width), np.float32) * 0.02},
            "wpe": {"embedding": rng.standard_normal((context, width), np.float32) * 0.01},
            "h": blocks, "ln_f": norm()}
  return jax.tree.map(jnp.asarray, params)


def time_steps(step, params, state, grads, count, steps, repeats, warmup=2):
  """Median seconds per step; returns it and the (donated, renewed) params and state."""
  for _ in range(warmup):  # the first call compiles
    params, state = step(params, state, grads, count)
    jax.block_until_ready(params)
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    for _ in range(steps):
      params, state = step(params, state, grads, count)
    jax.block_until_ready((params, state))
    times.append((time.perf_counter() - start) / steps)
  return statistics.median(times), params, state


def with_count(state, count):
  """Every int32 scalar ``count`` in the state set to ``count`` (traced)."""
  def set_count(x):
    if isinstance(x, tuple) and hasattr(x, "_replace") and "count" in getattr(x, "_fields", ()):
      return x._replace(count=jnp.asarray(count, x.count.dtype))
    return x
  return jax.tree.map(set_count, state, is_leaf=lambda x: hasattr(x, "_fields") and
                      "count" in x._fields)


def make_step(tx, set_count):
  def step(params, state, grads, count):
    if set_count:
      state = with_count(state, count)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state
  return jax.jit(step, donate_argnums=(0, 1))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--width", type=int, default=768)
  parser.add_argument("--steps", type=int, default=3, help="steps per timing")
  parser.add_argument("--repeats", type=int, default=5, help="timings per optimizer")
  parser.add_argument("--update_proj_gap", type=int, default=200)
  parser.add_argument("--only", default="", help="comma-separated subset of optimizers")
  args = parser.parse_args()

  params = gpt2_params(width=args.width)
  n = sum(x.size for x in jax.tree.leaves(params))
  grads = jax.tree.map(lambda x: jax.random.normal(jax.random.key(1), x.shape, x.dtype) * 1e-3,
                       params)
  mask, gap = labels.decay_mask, args.update_proj_gap
  candidates = {
      "adamw": optax.adamw(1e-3, weight_decay=0.1, mask=mask),
      "adamp": adamp(1e-3, weight_decay=0.1, weight_decay_mask=mask),
      "sgd": optax.sgd(1e-3, momentum=0.9, nesterov=True),
      "sgdp": sgdp(1e-3, momentum=0.9, nesterov=True, weight_decay=0.1, weight_decay_mask=mask),
      "conda": conda(1e-3, weight_decay=0.1, weight_decay_mask=mask, update_proj_gap=gap,
                     conda_mask="attention_mlp_kernels"),
      "conda_all_2d": conda(1e-3, weight_decay=0.1, weight_decay_mask=mask,
                            update_proj_gap=gap),
      "nap_adamw": optax.chain(optax.adamw(1e-3, weight_decay=0.1, mask=mask),
                               normalize_and_project()),
  }
  if args.only:
    keep = ["adamw"] + [k for k in args.only.split(",") if k != "adamw"]
    candidates = {k: candidates[k] for k in keep}
  print(f"{jax.devices()[0].device_kind} ({jax.default_backend()}), {jax.device_count()} "
        f"device(s); GPT-2 tree width {args.width}: {n / 1e6:.1f}M parameters; median of "
        f"{args.repeats} x {args.steps} steps")
  results = {}
  for name, tx in candidates.items():
    state = tx.init(params)
    if name.startswith("conda"):
      step = make_step(tx, set_count=True)
      # matmul-bound on CPU: one step per timing; the refresh (SVDs) is slower still
      plain, params, state = time_steps(step, params, state, grads, 1, 1, args.repeats)
      refresh, params, state = time_steps(step, params, state, grads, 0, 1,
                                          max(2, args.repeats // 2), warmup=1)
      results[name] = ((gap - 1) * plain + refresh) / gap
      detail = (f"  (plain step {plain * 1e3:.1f} ms, refresh step {refresh * 1e3:.1f} ms, "
                f"T={gap})")
    else:
      step = make_step(tx, set_count=False)
      results[name], params, state = time_steps(step, params, state, grads, 0, args.steps,
                                                args.repeats)
      detail = ""
    del state
    ratio = results[name] / results["adamw"]
    print(f"{name:>13}: {results[name] * 1e3:9.1f} ms/step  {ratio:5.2f}x adamw{detail}",
          flush=True)


if __name__ == "__main__":
  main()
