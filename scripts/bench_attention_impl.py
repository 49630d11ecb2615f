r"""normjax.kernels.attention's implementations against torch's scaled_dot_product_attention.

  python scripts/bench_attention_impl.py [--calls 10] [--rounds 3] [--threads 2]

Forward+backward (the vjp of a random cotangent with respect to q, k, v) of one multi-head
attention call, float32, in three shapes: GPT-2 of bench_vs_torch (batch 8, 256 tokens,
4 heads of 64, causal), its ViT (batch 64, 65 tokens, 3 heads of 64, not causal) and a longer
context (batch 2, 1024 tokens, 4 heads of 64, causal); ``blocked`` also at 4 and 16 query
blocks. Each is jitted; rounds alternate the order; the figure is the median over rounds of
the mean of ``--calls`` calls. torch (when installed): ``F.scaled_dot_product_attention``
on (B, H, T, D) tensors, ``backward`` of the same cotangent, ``--threads`` threads.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402

from normjax.kernels import attention as attn  # noqa: E402

SHAPES = {
  "gpt2 (8, 256, 4, 64) causal": ((8, 256, 4, 64), True),
  "vit (64, 65, 3, 64)": ((64, 65, 3, 64), False),
  "long (2, 1024, 4, 64) causal": ((2, 1024, 4, 64), True),
}


def jax_case(fn, arrays):
  q, k, v, g = arrays
  run = jax.jit(lambda q, k, v: jax.vjp(fn, q, k, v)[1](g))
  return lambda: jax.block_until_ready(run(q, k, v))


def torch_case(arrays, causal):
  import torch

  q, k, v = (torch.tensor(np.swapaxes(a, 1, 2), requires_grad=True) for a in arrays[:3])
  g = torch.tensor(np.swapaxes(arrays[3], 1, 2))

  def step():
    for t in (q, k, v):
      t.grad = None
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)
    out.backward(g)

  return step


def mean_time(fn, calls):
  fn()
  start = time.perf_counter()
  for _ in range(calls):
    fn()
  return (time.perf_counter() - start) / calls


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--calls", type=int, default=10)
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--threads", type=int, default=2)
  args = parser.parse_args()
  try:
    import torch

    torch.set_num_threads(args.threads)
  except ImportError:
    torch = None
  print(f"jax {jax.__version__}" + (f", torch {torch.__version__}" if torch else ""))
  print("| shape | implementation | fwd+bwd ms | / xla |")
  print("|---|---|---|---|")
  rng = np.random.default_rng(0)
  for label, (shape, causal) in SHAPES.items():
    arrays = [rng.standard_normal(shape).astype(np.float32) for _ in range(4)]
    cases = {
      name: jax_case(
        lambda q, k, v, name=name: attn.attention(q, k, v, is_causal=causal, implementation=name),
        arrays,
      )
      for name in ("xla", "blocked")
    }
    if causal:
      for n in (4, 16):
        cases[f"blocked, {n} blocks"] = jax_case(
          lambda q, k, v, n=n: attn.blocked_attention(q, k, v, is_causal=True, blocks=n), arrays
        )
    if torch:
      cases["torch sdpa"] = torch_case(arrays, causal)
    times = {name: [] for name in cases}
    for r in range(args.rounds):
      for name, fn in cases.items() if r % 2 == 0 else reversed(cases.items()):
        times[name].append(mean_time(fn, args.calls))
    med = {name: statistics.median(t) for name, t in times.items()}
    for name, t in med.items():
      print(f"| {label} | {name} | {t * 1e3:.2f} | {t / med['xla']:.2f} |", flush=True)


if __name__ == "__main__":
  main()
