r"""normjax's max pool against nnx.max_pool (lax.reduce_window) and torch's max_pool2d.

  python scripts/bench_pooling.py [--calls 5] [--rounds 3] [--threads 2]

Forward+backward (the vjp of a random cotangent) of the ImageNet-stem pool, 3x3 window,
stride 2, padding 1, on a (16, 112, 112, 64) float32 NHWC batch (the ResNet of
``scripts/bench_vs_torch.py``); torch on the same values in NCHW. Jitted; rounds alternate the
order; the figure is the median over rounds of the mean of ``--calls`` calls.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from normjax.models.pooling import max_pool  # noqa: E402

ARGS = dict(strides=(2, 2), padding=((1, 1), (1, 1)))


def jax_case(pool, x, dy):
  run = jax.jit(lambda x: jax.vjp(lambda x: pool(x, (3, 3), **ARGS), x)[1](dy)[0])
  return lambda: jax.block_until_ready(run(x))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--calls", type=int, default=5)
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--threads", type=int, default=2)
  args = parser.parse_args()
  rng = np.random.default_rng(0)
  x = rng.standard_normal((16, 112, 112, 64)).astype(np.float32)
  dy = rng.standard_normal((16, 56, 56, 64)).astype(np.float32)
  cases = {"nnx.max_pool": jax_case(nnx.max_pool, x, dy), "normjax": jax_case(max_pool, x, dy)}
  try:
    import torch

    torch.set_num_threads(args.threads)
    tx = torch.tensor(x).permute(0, 3, 1, 2).contiguous().requires_grad_()
    tdy = torch.tensor(dy).permute(0, 3, 1, 2).contiguous()

    def torch_case():
      tx.grad = None
      torch.nn.functional.max_pool2d(tx, 3, 2, 1).backward(tdy)

    cases["torch max_pool2d"] = torch_case
  except ImportError:
    pass
  times = {name: [] for name in cases}
  for r in range(args.rounds):
    for name, fn in cases.items() if r % 2 == 0 else reversed(cases.items()):
      fn()
      start = time.perf_counter()
      for _ in range(args.calls):
        fn()
      times[name].append((time.perf_counter() - start) / args.calls)
  base = statistics.median(times["nnx.max_pool"])
  print("| implementation | fwd+bwd ms | / nnx.max_pool |")
  print("|---|---|---|")
  for name, t in times.items():
    print(f"| {name} | {statistics.median(t) * 1e3:.1f} | {statistics.median(t) / base:.2f} |")


if __name__ == "__main__":
  main()
