r"""The dense layer's backward dots on XLA:CPU against torch: layout and the dX / dW pair.

  python scripts/bench_dense_backward.py [--calls 10] [--rounds 5] [--threads 2]

The profile of issue 13 shows the backward ``dy @ W^T`` of GPT-2's dense layers at 65-100
GFLOP/s inside the training step against ~140 alone. This separates the suspects, per shape
(the GPT-2 step's MLP and attention projections, tokens = batch 8 x 256), float32:

* ``fwd+bwd (in,out)``: the vjp of ``x @ W`` with ``W`` stored (in, out) as flax stores it;
* ``fwd+bwd (out,in)``: the same with ``W`` stored (out, in) as torch stores it (``x @ W.T``);
* ``dX alone`` / ``dW alone``: ``g @ W^T`` and ``x^T @ g`` each in its own jit;
* ``dX + dW``: both in one jit, which XLA may run concurrently on the 2-thread pool;
* torch: ``F.linear`` forward + backward, and ``g @ W`` / ``g^T @ x`` alone, ``--threads``.

Each figure is the median over rounds of the mean of ``--calls`` calls, in GFLOP/s and as a
ratio to torch's same operation, all in one process.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_attention_impl import mean_time  # noqa: E402

SHAPES = {
  "fc1 (2048, 256) -> 1024": (2048, 256, 1024),
  "fc2 (2048, 1024) -> 256": (2048, 1024, 256),
  "qkv (2048, 256) -> 768": (2048, 256, 768),
}


def jax_cases(m, k, n, rng):
  x, g = rng.standard_normal((m, k), np.float32), rng.standard_normal((m, n), np.float32)
  w = rng.standard_normal((k, n), np.float32)
  x, g, w, wt = map(jnp.asarray, (x, g, w, w.T.copy()))
  both_in_out = jax.jit(lambda x, w: jax.vjp(lambda x, w: x @ w, x, w)[1](g))
  both_out_in = jax.jit(lambda x, wt: jax.vjp(lambda x, wt: x @ wt.T, x, wt)[1](g))
  dx = jax.jit(lambda g, w: g @ w.T)
  dw = jax.jit(lambda x, g: x.T @ g)
  pair = jax.jit(lambda x, g, w: (g @ w.T, x.T @ g))
  ready = jax.block_until_ready
  return {
    "fwd+bwd (in,out)": (3, lambda: ready(both_in_out(x, w))),
    "fwd+bwd (out,in)": (3, lambda: ready(both_out_in(x, wt))),
    "dX alone": (1, lambda: ready(dx(g, w))),
    "dW alone": (1, lambda: ready(dw(x, g))),
    "dX + dW": (2, lambda: ready(pair(x, g, w))),
  }


def torch_cases(m, k, n, rng):
  import torch

  x = torch.tensor(rng.standard_normal((m, k), np.float32), requires_grad=True)
  w = torch.tensor(rng.standard_normal((n, k), np.float32), requires_grad=True)
  g = torch.tensor(rng.standard_normal((m, n), np.float32))

  def both():
    x.grad = w.grad = None
    torch.nn.functional.linear(x, w).backward(g)

  with torch.no_grad():
    xd, wd = x.detach(), w.detach()
    return {
      "fwd+bwd (in,out)": (3, both),
      "fwd+bwd (out,in)": (3, both),
      "dX alone": (1, lambda: g @ wd),
      "dW alone": (1, lambda: g.T @ xd),
      "dX + dW": (2, lambda: (g @ wd, g.T @ xd)),
    }


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--calls", type=int, default=10)
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--threads", type=int, default=2)
  args = parser.parse_args()
  try:
    import torch

    torch.set_num_threads(args.threads)
  except ImportError:
    torch = None
  rng = np.random.default_rng(0)
  print(f"jax {jax.__version__}, torch {torch.__version__ if torch else 'absent'}")
  print("| shape | case | jax ms | jax GFLOP/s | torch ms | jax / torch |")
  print("|---|---|---|---|---|---|")
  for name, (m, k, n) in SHAPES.items():
    cases = {"jax": jax_cases(m, k, n, rng)}
    if torch:
      cases["torch"] = torch_cases(m, k, n, rng)
    times = {(lib, c): [] for lib in cases for c in cases[lib]}
    for r in range(args.rounds):
      libs = list(cases) if r % 2 == 0 else list(cases)[::-1]
      for lib in libs:
        for case, (_, fn) in cases[lib].items():
          times[(lib, case)].append(mean_time(fn, args.calls))
    for case, (dots, _) in cases["jax"].items():
      jax_s = statistics.median(times[("jax", case)])
      gflops = dots * 2 * m * k * n / jax_s / 1e9
      if torch:
        torch_s = statistics.median(times[("torch", case)])
        cells = f"{torch_s * 1e3:.2f} | {jax_s / torch_s:.3f}"
      else:
        cells = "- | -"
      print(f"| {name} | {case} | {jax_s * 1e3:.2f} | {gflops:.0f} | {cells} |")


if __name__ == "__main__":
  main()
