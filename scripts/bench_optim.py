r"""Update-step time of normjax's optimizers against optax.adamw, GPT-2-small-shaped tree.

  python scripts/bench_optim.py                    # GPT-2 small (124M parameters)
  python scripts/bench_optim.py --width 256        # a smaller tree for a quick look
  python scripts/bench_optim.py --only conda_all_2d

One process, one parameter tree (hand-built shapes: wte (50257, d), wpe (1024, d), 12
blocks of ln_1, attn.c_attn (d, 3d), attn.c_proj (d, d), ln_2, mlp.c_fc (d, 4d),
mlp.c_proj (4d, d) with biases, ln_f), float32. The timed step is what a trainer runs
after the backward pass: ``update`` + ``apply_updates``, jitted, with params and
optimizer state donated.

Timing is interleaved so that load from other processes hits both sides of a ratio:
every round times adamw and then each optimizer (``--steps`` steps after a warm-up step,
fresh state each time); the reported ratio is the median over rounds of
``t_opt / t_adamw`` from the same round, the times are medians too.

Conda refreshes its basis (GaLore and Q-GaLore their projectors) by SVDs when
``count % update_proj_gap == 0``. Both branches of that ``lax.cond`` are timed (the step
count is an argument of the timed function, so nothing is constant-folded): the plain
step in every round, the refresh step once at the end beside an adamw timing, and they
are amortised over one period T:
``((T - 1) t_plain + t_refresh) / T``. The optimizer-state bytes of each are printed last.

``--only grassmann_rsgd``: GCR's Riemannian SGD (``normjax.optim.grassmann_rsgd``) on the
leaf it is for, an ImageNet-sized Grassmann head (1000 classes, d = ``--width``, k = 8:
``(1000, d, 8)``), against adamw on the same leaf; the QR step (every ``reorth_every`` = 5)
is timed like Conda's refresh and amortised; state bytes of both.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from normjax.optim import (
  adamp,
  conda,
  grassmann_rsgd,
  labels,
  normalize_and_project,
  q_galore,
  sgdp,
)


def gpt2_params(width=768, depth=12, vocab=50257, context=1024, seed=0):
  rng = np.random.default_rng(seed)
  dense = lambda i, o: {
    "kernel": rng.standard_normal((i, o), np.float32) * 0.02,
    "bias": np.zeros((o,), np.float32),
  }
  norm = lambda: {"scale": np.ones((width,), np.float32), "bias": np.zeros((width,), np.float32)}
  blocks = {
    str(i): {
      "ln_1": norm(),
      "attn": {"c_attn": dense(width, 3 * width), "c_proj": dense(width, width)},
      "ln_2": norm(),
      "mlp": {"c_fc": dense(width, 4 * width), "c_proj": dense(4 * width, width)},
    }
    for i in range(depth)
  }
  return {
    "wte": {"embedding": rng.standard_normal((vocab, width), np.float32) * 0.02},
    "wpe": {"embedding": rng.standard_normal((context, width), np.float32) * 0.01},
    "h": blocks,
    "ln_f": norm(),
  }


REFRESHING = ("conda", "q_galore", "galore")  # SVD refreshes under lax.cond on the count


def with_count(state, count):
  """Every optimizer-state NamedTuple's ``count`` set to ``count`` (traced)."""
  has_count = lambda x: hasattr(x, "_fields") and "count" in x._fields
  return jax.tree.map(
    lambda x: x._replace(count=jnp.asarray(count, x.count.dtype)) if has_count(x) else x,
    state,
    is_leaf=has_count,
  )


class Timed:
  """One optimizer's jitted, donated step and its timings."""

  def __init__(self, tx, set_count=False):
    def step(params, state, grads, count):
      if set_count:
        state = with_count(state, count)
      updates, state = tx.update(grads, state, params)
      return optax.apply_updates(params, updates), state

    self.tx, self.step = tx, jax.jit(step, donate_argnums=(0, 1))

  def seconds_per_step(self, host_params, grads, count, steps, warmup=True):
    params = jax.tree.map(jnp.asarray, host_params)  # fresh buffers: they get donated
    state = self.tx.init(params)
    if warmup:  # the first call also compiles
      params, state = self.step(params, state, grads, count)
      jax.block_until_ready(params)
    start = time.perf_counter()
    for _ in range(steps):
      params, state = self.step(params, state, grads, count)
    jax.block_until_ready((params, state))
    return (time.perf_counter() - start) / steps


def candidates(gap):
  mask = labels.decay_mask
  return {
    "adamw": optax.adamw(1e-3, weight_decay=0.1, mask=mask),
    "adamp": adamp(1e-3, weight_decay=0.1, weight_decay_mask=mask),
    "sgd": optax.sgd(1e-3, momentum=0.9, nesterov=True),
    "sgdp": sgdp(1e-3, momentum=0.9, nesterov=True, weight_decay=0.1, weight_decay_mask=mask),
    # without Nesterov: the projected direction is written into the buffer (official)
    "sgdp_plain": sgdp(1e-3, momentum=0.9, weight_decay=0.1, weight_decay_mask=mask),
    "sgdp_copy": sgdp(
      1e-3, momentum=0.9, weight_decay=0.1, weight_decay_mask=mask, project_momentum=False
    ),
    "nap_adamw": optax.chain(
      optax.adamw(1e-3, weight_decay=0.1, mask=mask), normalize_and_project()
    ),
    "conda": conda(
      1e-3,
      weight_decay=0.1,
      weight_decay_mask=mask,
      update_proj_gap=gap,
      conda_mask="attention_mlp_kernels",
    ),
    "conda_rotated": conda(
      1e-3,
      weight_decay=0.1,
      weight_decay_mask=mask,
      update_proj_gap=gap,
      conda_mask="attention_mlp_kernels",
      rotated_momentum=True,
    ),
    "conda_all_2d": conda(1e-3, weight_decay=0.1, weight_decay_mask=mask, update_proj_gap=gap),
    # Q-GaLore's recipe (rank 128, official side, INT4 projector, signed lazy gap) on the
    # attention/MLP kernels; galore: optax.contrib.galore's defaults (every 2-D leaf)
    "q_galore": q_galore(
      1e-3,
      rank=128,
      update_proj_gap=gap,
      scale=0.25,
      galore_mask="attention_mlp_kernels",
      side="official",
      proj_bits=4,
      lazy_cosine="signed",
      decay_after_step=True,
    ),
    "galore": optax.contrib.galore(1e-3, rank=128, update_proj_gap=gap),
  }


def state_bytes(tx, params) -> int:
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(jax.eval_shape(tx.init, params)))


def bench_grassmann(width: int, steps: int, rounds: int, reorth_every: int = 5):
  """grassmann_rsgd vs adamw on a (1000, width, 8) basis leaf; QR step amortised."""
  rng = np.random.default_rng(0)
  host = {"grassmann_basis": np.linalg.qr(rng.standard_normal((1000, width, 8)))[0].astype("f4")}
  grads = {"grassmann_basis": jnp.asarray(rng.standard_normal((1000, width, 8)), jnp.float32)}
  txs = {"adamw": optax.adamw(1e-3), "grassmann_rsgd": grassmann_rsgd(0.1, reorth_every=5)}
  timed = {k: Timed(tx, set_count=True) for k, tx in txs.items()}
  ratios, plain, qr = [], [], []
  for _ in range(rounds):
    base = timed["adamw"].seconds_per_step(host, grads, 1, steps)
    plain.append(timed["grassmann_rsgd"].seconds_per_step(host, grads, 1, steps))
    qr.append(timed["grassmann_rsgd"].seconds_per_step(host, grads, 0, steps) / base)
    ratios.append(plain[-1] / base)
  med = statistics.median
  amortised = ((reorth_every - 1) * med(ratios) + med(qr)) / reorth_every
  print(
    f"grassmann_rsgd on (1000, {width}, 8): {med(plain) * 1e3:.2f} ms/step plain "
    f"({med(ratios):.2f}x adamw), QR step {med(qr):.2f}x adamw; amortised over "
    f"reorth_every={reorth_every}: {amortised:.2f}x adamw; state "
    f"{state_bytes(txs['grassmann_rsgd'], host) / 2**20:.1f} MiB vs adamw "
    f"{state_bytes(txs['adamw'], host) / 2**20:.1f} MiB",
    flush=True,
  )


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--width", type=int, default=768)
  parser.add_argument("--steps", type=int, default=3, help="steps per timing (Conda: 1)")
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--update_proj_gap", type=int, default=200)
  parser.add_argument(
    "--only",
    default="adamp,sgd,sgdp,nap_adamw,conda",
    help="comma-separated optimizers to compare with adamw (also: "
    "sgdp_plain, SGDP without Nesterov, projected buffer; "
    "sgdp_copy, the same with project_momentum=False; "
    "conda_rotated, momentum kept rotated; conda_all_2d, Conda on "
    "every 2-D leaf; q_galore, Q-GaLore's recipe; galore, optax's)",
  )
  args = parser.parse_args()

  if args.only == "grassmann_rsgd":  # its own tree: a GCR head's bases
    bench_grassmann(args.width, args.steps, args.rounds)
    return
  host_params = gpt2_params(width=args.width)
  n = sum(x.size for x in jax.tree.leaves(host_params))
  grads = jax.tree.map(lambda x: jnp.asarray(np.full(x.shape, 1e-3, x.dtype)), host_params)
  all_tx, gap = candidates(args.update_proj_gap), args.update_proj_gap
  names = [k for k in args.only.split(",") if k and k != "adamw"]
  unknown = sorted(set(names) - set(all_tx))
  if unknown:
    raise ValueError(f"--only: unknown {unknown}; known: {sorted(all_tx)}")
  timed = {k: Timed(all_tx[k], set_count=k.startswith(REFRESHING)) for k in ["adamw"] + names}
  print(
    f"{jax.devices()[0].device_kind} ({jax.default_backend()}); GPT-2 tree width "
    f"{args.width}: {n / 1e6:.1f}M parameters; {args.rounds} interleaved rounds",
    flush=True,
  )

  times = {k: [] for k in timed}
  ratios = {k: [] for k in names}
  for _ in range(args.rounds):
    for name in names:
      base = timed["adamw"].seconds_per_step(host_params, grads, 0, args.steps)
      steps = 1 if name.startswith(REFRESHING) else args.steps
      t = timed[name].seconds_per_step(host_params, grads, 1, steps)  # count 1: no refresh
      times["adamw"].append(base)
      times[name].append(t)
      ratios[name].append(t / base)

  med = lambda xs: statistics.median(xs)
  print(f"{'adamw':>13}: {med(times['adamw']) * 1e3:9.1f} ms/step   1.00x adamw")
  for name in names:
    line = f"{name:>13}: {med(times[name]) * 1e3:9.1f} ms/step  {med(ratios[name]):5.2f}x adamw"
    if name.startswith(REFRESHING):
      base = timed["adamw"].seconds_per_step(host_params, grads, 0, args.steps)
      # count 0: the SVD branch; already compiled (count is traced), so no warm-up
      refresh = timed[name].seconds_per_step(host_params, grads, 0, 1, warmup=False)
      plain_ratio = med(ratios[name])
      amortised = ((gap - 1) * plain_ratio + refresh / base) / gap
      line = (
        f"{name:>13}: {med(times[name]) * 1e3:9.1f} ms/step plain, {refresh * 1e3:.0f} "
        f"ms/step refresh; amortised over T={gap}: {amortised:5.2f}x adamw "
        f"(plain {plain_ratio:.2f}x, refresh {refresh / base:.0f}x)"
      )
    print(line, flush=True)
  params = jax.tree.map(jnp.asarray, host_params)
  for name in ["adamw"] + names:  # optimizer-state bytes (q_galore: low-rank + INT4 projectors)
    state_bytes = sum(x.nbytes for x in jax.tree.leaves(all_tx[name].init(params)))
    print(f"{name:>13}: optimizer state {state_bytes / 2**20:8.1f} MiB", flush=True)


if __name__ == "__main__":
  main()
