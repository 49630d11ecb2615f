r"""Time and memory of one self-attention call vs the number of tokens: softmax vs SOFT.

  python scripts/bench_attention.py                          # N in 64 256 1024 4096
  python scripts/bench_attention.py --tokens 64,256 --calls 5 --json out.json

One attention layer as the ViT uses it (``normjax.models.transformer.MultiHeadSelfAttention``
for 'softmax', ``normjax.models.soft_attention.SoftmaxFreeAttention`` for 'soft' / 'soft_norm'
/ 'gaussian'), width 64, 4 heads (head dim 16), batch 1, float32, on a sqrt(N) x sqrt(N)
token map with SOFT's defaults of ``configs/vit_soft.py`` (2 x 2 stride-2 landmark conv, so
m = N / 4 landmarks, a 3 x 3 DWConv, 20 Newton iterations) and also with a FIXED m = 64
landmarks (an 8 x 8 landmark map, stride sqrt(N)/8: ``soft@64``, ``soft_norm@64``; the official
stages 1-3 use 49), the linear-complexity regime (with m = N/4 the m x m Newton inverse costs
O(N^3); skipped above ``--max_quarter_tokens``).
Forward = ``y = attn(x)``; forward+backward = gradients of sum(y * dy) w.r.t. x and the
parameters. Time: median of ``--calls`` jitted calls after a warm-up, ``block_until_ready``.
Memory: the compiled executable's temporary buffer bytes (``memory_analysis()``, XLA's peak
scratch; arguments and outputs excluded), which is what grows with N x N score matrices.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time

import jax
import jax.numpy as jnp
from flax import nnx

from normjax.models.soft_attention import SoftmaxFreeAttention
from normjax.models.transformer import LinearInits, MultiHeadSelfAttention

WIDTH, HEADS = 64, 4


def build(kind: str, side: int, ratio: int) -> nnx.Module:
  xavier = nnx.initializers.xavier_uniform()
  inits = LinearInits(xavier, xavier, xavier, xavier)
  common = dict(causal=False, inits=inits, dtype=jnp.float32, rngs=nnx.Rngs(0))
  if kind == "softmax":
    return MultiHeadSelfAttention(WIDTH, HEADS, **common)
  return SoftmaxFreeAttention(
    WIDTH, HEADS, kind=kind, grid=(side, side), ratio=ratio, conv_size=3, **common
  )


def measure(module, x, calls: int, backward: bool) -> tuple[float, int]:
  graph, params = nnx.split(module)

  def forward(params, x):
    return nnx.merge(graph, params)(x)

  if backward:
    dy = jax.random.normal(jax.random.key(1), x.shape, x.dtype)
    fn = jax.jit(jax.grad(lambda p, x: jnp.sum(forward(p, x) * dy), argnums=(0, 1)))
  else:
    fn = jax.jit(forward)
  compiled = fn.lower(params, x).compile()
  temp = compiled.memory_analysis().temp_size_in_bytes
  jax.block_until_ready(compiled(params, x))
  times = []
  for _ in range(calls):
    start = time.perf_counter()
    jax.block_until_ready(compiled(params, x))
    times.append(time.perf_counter() - start)
  return statistics.median(times), int(temp)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--tokens", default="64,256,1024,4096")
  parser.add_argument("--kinds", default="softmax,gaussian,soft,soft_norm,soft@64,soft_norm@64")
  parser.add_argument("--calls", type=int, default=5)
  parser.add_argument(
    "--max_quarter_tokens", type=int, default=1024, help="largest N for m = N/4 landmarks"
  )
  parser.add_argument("--json", default=None)
  args = parser.parse_args()
  rows = []
  print(f"device: {jax.devices()[0].device_kind}; width {WIDTH}, {HEADS} heads, batch 1, f32")
  print(f"{'kind':>10} {'N':>5} {'m':>5} {'fwd ms':>9} {'f+b ms':>9} {'fwd MiB':>8} {'f+b MiB':>8}")
  for n in map(int, args.tokens.split(",")):
    side = math.isqrt(n)
    x = jax.random.normal(jax.random.key(0), (1, n, WIDTH), jnp.float32)
    for spec in args.kinds.split(","):
      kind, _, fixed = spec.partition("@")
      ratio = max(1, side // math.isqrt(int(fixed))) if fixed else 2
      if kind in ("soft", "soft_norm") and not fixed and n > args.max_quarter_tokens:
        continue  # m = N/4: 20 Newton steps on (N/4)^2 matrices, O(N^3), minutes on a CPU
      module = build(kind, side, ratio)
      m = 0 if kind in ("softmax", "gaussian") else (side // ratio) ** 2
      fwd, fwd_mem = measure(module, x, args.calls, backward=False)
      both, both_mem = measure(module, x, args.calls, backward=True)
      row = dict(
        kind=spec,
        tokens=n,
        landmarks=m,
        forward_s=fwd,
        forward_backward_s=both,
        forward_temp_bytes=fwd_mem,
        forward_backward_temp_bytes=both_mem,
      )
      rows.append(row)
      print(
        f"{spec:>10} {n:>5} {m:>5} {fwd * 1e3:9.2f} {both * 1e3:9.2f} "
        f"{fwd_mem / 2**20:8.2f} {both_mem / 2**20:8.2f}",
        flush=True,
      )
  if args.json:
    with open(args.json, "w") as f:
      json.dump(rows, f, indent=1)


if __name__ == "__main__":
  main()
