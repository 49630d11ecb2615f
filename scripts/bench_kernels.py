"""Benchmark normjax.kernels LayerNorm/RMSNorm against flax.linen on this backend.

    python scripts/bench_kernels.py                          # (8192,768), (32768,4096)
    python scripts/bench_kernels.py --shapes 8192x768 --repeats 20
    python scripts/bench_kernels.py --formulations           # CPU: alternative XLA forms

For each shape and norm it times, with warm-up, ``block_until_ready`` and the
median of several repeats (see ``time_interleaved``: candidates take turns in
rounds, so load from other processes hits all of them alike):

* forward: ``y = norm(x)``;
* forward+backward: ``y, vjp = jax.vjp(norm, x, scale[, bias]); vjp(dy)``, i.e.
  y, dx, dscale (and dbias) from a given cotangent ``dy``.

Achieved bandwidth counts the minimum traffic: forward reads x and writes y
(2 arrays); forward+backward also reads x and dy and writes dx (5 arrays).
Parameters and per-row statistics are ignored (< 0.1%). On GPU the script also
prints the fraction of the device's peak memory bandwidth (datasheet figure from
``PEAK_BANDWIDTH`` or ``--peak-gbps``).

``--formulations`` (CPU) times the alternative XLA formulations of the fused
LayerNorm that were tried while tuning ``normjax/kernels/fused.py``.

On a 2-core CPU the default run takes a few minutes (peak memory about 4.5 GB,
for 32768x4096); big shapes get fewer repeats. Results: benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time

import flax.linen as nn
import jax
import jax.numpy as jnp

from normjax import kernels

# Datasheet HBM bandwidth, bytes/s, by substring of jax Device.device_kind.
PEAK_BANDWIDTH = {
  "H200": 4.8e12,
  "H100": 3.35e12,
  "A100-SXM4-80GB": 2.04e12,
  "A100": 1.555e12,
  "L4": 0.3e12,
  "V100": 0.9e12,
  "TPU v4": 1.2e12,
  "TPU v5 lite": 0.82e12,
  "TPU v5p": 2.76e12,
  "TPU v5": 2.76e12,
  "TPU v6": 1.64e12,
}


def parse_shape(text: str) -> tuple[int, ...]:
  try:
    shape = tuple(int(s) for s in text.lower().split("x"))
  except ValueError:
    shape = ()
  if len(shape) != 2 or min(shape) < 1:
    raise argparse.ArgumentTypeError(
      f"--shapes entry {text!r}: expected ROWSxFEATURES, e.g. 8192x768"
    )
  return shape


def time_interleaved(fns: dict, args: dict, *, warmup: int, repeats: int, rounds: int = 3) -> dict:
  """Per ``fns[k](*args[k])``: (median wall s, min wall s, median process CPU s,
  mean minor page faults per call).

  ``rounds`` rounds; in each, every candidate runs ``warmup`` untimed calls and
  then ``repeats // rounds`` timed calls in a row, and the order of candidates
  rotates from round to round. Consecutive calls see the allocator state the
  function itself leaves (a call right after a function that freed much memory
  pays the page faults of re-mapping it), and rotating spreads both that and the
  load of other processes over all candidates. CPU time (all threads of this
  process) is less sensitive than wall time to other processes.
  """
  per_round = max(1, repeats // rounds)
  wall = {name: [] for name in fns}
  cpu = {name: [] for name in fns}
  faults = {name: [] for name in fns}
  names = list(fns)
  for r in range(rounds):
    for name in names[r % len(names) :] + names[: r % len(names)]:
      fn = fns[name]
      for _ in range(warmup):
        jax.block_until_ready(fn(*args[name]))
      for _ in range(per_round):
        faults_start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        cpu_start, start = time.process_time(), time.perf_counter()
        jax.block_until_ready(fn(*args[name]))
        wall[name].append(time.perf_counter() - start)
        cpu[name].append(time.process_time() - cpu_start)
        faults[name].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults_start)
  return {
    name: (
      statistics.median(wall[name]),
      min(wall[name]),
      statistics.median(cpu[name]),
      statistics.mean(faults[name]),
    )
    for name in fns
  }


def forward_and_backward(f):
  def run(x, *params_and_dy):
    *params, dy = params_and_dy
    y, vjp = jax.vjp(f, x, *params)
    return y, vjp(dy)

  return run


def candidates(norm: str, epsilon: float, implementation: str | None):
  """(normjax fn, flax fn), both ``f(x, scale[, bias])``."""
  if norm == "layer_norm":
    module = nn.LayerNorm(epsilon=epsilon)
    ours = lambda x, s, b: kernels.layer_norm(
      x, s, b, epsilon=epsilon, implementation=implementation
    )
    theirs = lambda x, s, b: module.apply({"params": {"scale": s, "bias": b}}, x)
  else:
    module = nn.RMSNorm(epsilon=epsilon)
    ours = lambda x, s: kernels.rms_norm(x, s, epsilon=epsilon, implementation=implementation)
    theirs = lambda x, s: module.apply({"params": {"scale": s}}, x)
  return ours, theirs


def peak_bandwidth(device, override_gbps):
  if override_gbps:
    return override_gbps * 1e9
  for key, value in PEAK_BANDWIDTH.items():
    if key.lower() in device.device_kind.lower():
      return value
  return None


def bench_shape(shape, norm, dtype, args):
  n, d = shape
  keys = jax.random.split(jax.random.key(0), 4)
  x = jax.random.normal(keys[0], shape, dtype)
  dy = jax.random.normal(keys[1], shape, dtype)
  scale = 1.0 + 0.1 * jax.random.normal(keys[2], (d,))
  params = (scale, 0.1 * jax.random.normal(keys[3], (d,))) if norm == "layer_norm" else (scale,)
  ours, theirs = candidates(norm, args.epsilon, args.implementation)
  fns = {
    "normjax fwd": jax.jit(ours),
    "flax fwd": jax.jit(theirs),
    "normjax fwd+bwd": jax.jit(forward_and_backward(ours)),
    "flax fwd+bwd": jax.jit(forward_and_backward(theirs)),
  }
  inputs = {k: (x, *params) if k.endswith("fwd") else (x, *params, dy) for k in fns}
  # Big shapes (32768x4096: 512 MiB per array, seconds per flax fwd+bwd on 2 cores)
  # get fewer calls: at least 4 timed calls in 2 rounds.
  shrink = max(1, n * d // (8192 * 768 * 4))
  timings = time_interleaved(
    fns,
    inputs,
    warmup=max(1, args.warmup // shrink),
    repeats=max(4, args.repeats // shrink),
    rounds=max(2, args.rounds // shrink) if shrink > 1 else args.rounds,
  )
  array_bytes = n * d * jnp.dtype(dtype).itemsize
  rows = []
  for name, (median, best, cpu, faults) in timings.items():
    traffic = (2 if name.endswith("fwd") else 5) * array_bytes
    rows.append(
      dict(
        shape=f"{n}x{d}",
        norm=norm,
        dtype=jnp.dtype(dtype).name,
        what=name,
        median_ms=median * 1e3,
        min_ms=best * 1e3,
        cpu_ms=cpu * 1e3,
        faults=faults,
        gbps=traffic / median / 1e9,
      )
    )
  return rows


# ----------------------------------------------------------------------------
# CPU formulation study: alternative XLA forms of the fused LayerNorm.
# ----------------------------------------------------------------------------
def _formulations():
  """name -> LayerNorm f(x, s, b) through fused.layer_norm with swapped parts."""
  from normjax.kernels import fused

  def forward_fast(x, s, b, eps):  # E[x^2] - mean^2 (flax's default; loses precision)
    m = x.mean(-1)
    r = jax.lax.rsqrt(jnp.maximum((x * x).mean(-1) - m * m, 0.0) + eps)
    return x * r[:, None] * s + (b - (m * r)[:, None] * s), m, r

  def forward_centred(x, s, b, eps):  # keepdims centred form, stats as extra outputs
    m = x.mean(-1, keepdims=True)
    r = jax.lax.rsqrt(jnp.square(x - m).mean(-1, keepdims=True) + eps)
    return (x - m) * r * s + b, m[:, 0], r[:, 0]

  def backward_autodiff_style(x, s, m, r, dy, has_bias):  # xhat materialised, reduces
    xhat = (x - m[:, None]) * r[:, None]
    g = dy * s
    c1 = g.mean(-1, keepdims=True)
    c2 = (g * xhat).mean(-1, keepdims=True)
    return r[:, None] * (g - c1 - xhat * c2), (dy * xhat).sum(0), dy.sum(0)

  def backward_reduce(x, s, m, r, dy, has_bias):  # per-row coefficients, reduces
    d = x.shape[-1]
    g = dy * s
    p, q = g.sum(-1) / d, (g * x).sum(-1) / d
    q = r * (q - m * p)
    dx = r[:, None] * g - (r * r * q)[:, None] * x + (r * (r * q * m - p))[:, None]
    return dx, (dy * ((x - m[:, None]) * r[:, None])).sum(0), dy.sum(0)

  def backward_one_fusion(x, s, m, r, dy, has_bias):  # dx in one fusion, sums by reduce
    m, r = m[:, None], r[:, None]
    xc, g = x - m, dy * s
    c1 = g.mean(-1, keepdims=True)
    c2 = (g * xc).mean(-1, keepdims=True)
    return r * (g - c1) - xc * (r * r * r * c2), (dy * xc * r).sum(0), dy.sum(0)

  def swap(forward=None, backward=None, base=None):
    base = base or fused.XLA_KERNELS
    k = base._replace(
      name="study",
      layer_norm_forward=forward or base.layer_norm_forward,
      layer_norm_backward=backward or base.layer_norm_backward,
    )
    return lambda x, s, b: fused.layer_norm(x, s, b, kernels=k)

  k = 1024
  study = {f"shipped (bwd blocks {fused.BACKWARD_BLOCK_VALUES // k}K values)": swap()}
  for values in (None, 8 * k, 16 * k, 64 * k, 256 * k, 1024 * k):
    if values != fused.BACKWARD_BLOCK_VALUES:
      label = "bwd unblocked" if values is None else f"bwd blocks {values // k}K values"
      study[label] = swap(base=fused.xla_kernels(values))
  unblocked = fused.xla_kernels(None)
  study.update(
    {
      "fwd: fast variance E[x^2]-m^2": swap(forward=forward_fast),
      "fwd: centred keepdims + stats outputs": swap(forward=forward_centred),
      "bwd unblocked: coefficients by reduce": swap(backward=backward_reduce, base=unblocked),
      "bwd unblocked: autodiff-style xhat": swap(backward=backward_autodiff_style, base=unblocked),
      "bwd unblocked: dx one fusion + reduces": swap(backward=backward_one_fusion, base=unblocked),
      "jnp reference (plain autodiff)": lambda x, s, b: kernels.layer_norm(
        x, s, b, implementation="reference"
      ),
    }
  )
  return study


def bench_formulations(shape, args):
  n, d = shape
  keys = jax.random.split(jax.random.key(0), 4)
  x = jax.random.normal(keys[0], shape)
  dy = jax.random.normal(keys[1], shape)
  s = 1.0 + 0.1 * jax.random.normal(keys[2], (d,))
  b = 0.1 * jax.random.normal(keys[3], (d,))
  _, flax_ln = candidates("layer_norm", args.epsilon, None)
  fns = {"flax.linen.LayerNorm": jax.jit(forward_and_backward(flax_ln))}
  for name, f in _formulations().items():
    fns[name] = jax.jit(forward_and_backward(f))
  inputs = {k: (x, s, b, dy) for k in fns}
  timings = time_interleaved(
    fns, inputs, warmup=args.warmup, repeats=args.repeats, rounds=args.rounds
  )
  base = timings["flax.linen.LayerNorm"]
  print(
    f"\nLayerNorm forward+backward, {n}x{d} float32, formulations: wall median, "
    "wall min, CPU median (ms); ratios to flax of wall median, wall min, CPU median"
  )
  for name, (median, best, cpu, _) in timings.items():
    print(
      f"  {name:46s} {median * 1e3:7.2f} {best * 1e3:7.2f} {cpu * 1e3:7.2f}   "
      f"{median / base[0]:5.2f}x {best / base[1]:5.2f}x {cpu / base[2]:5.2f}x"
    )


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument(
    "--shapes",
    type=parse_shape,
    nargs="+",
    default=[(8192, 768), (32768, 4096)],
    help="ROWSxFEATURES ...",
  )
  parser.add_argument(
    "--norms", nargs="+", default=["layer_norm", "rms_norm"], choices=["layer_norm", "rms_norm"]
  )
  parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  parser.add_argument(
    "--implementation",
    default=None,
    choices=kernels.IMPLEMENTATIONS,
    help="normjax path to time (default: what the dispatcher picks)",
  )
  parser.add_argument("--epsilon", type=float, default=1e-6)
  parser.add_argument("--warmup", type=int, default=2, help="untimed calls per round")
  parser.add_argument("--repeats", type=int, default=12, help="timed calls per candidate")
  parser.add_argument(
    "--rounds",
    type=int,
    default=4,
    help="rounds over the candidates (repeats are split between them)",
  )
  parser.add_argument(
    "--peak-gbps", type=float, default=None, help="device peak memory bandwidth in GB/s (GPU/TPU)"
  )
  parser.add_argument(
    "--formulations",
    action="store_true",
    help="also time the alternative CPU formulations (first shape only)",
  )
  parser.add_argument("--json", default=None, help="write all rows to this JSON file")
  args = parser.parse_args()

  device = jax.devices()[0]
  x_probe = jnp.zeros((1, args.shapes[0][-1]))
  impl = kernels.resolve_implementation(x_probe, args.implementation)
  peak = peak_bandwidth(device, args.peak_gbps) if device.platform != "cpu" else None
  print(
    f"backend={jax.default_backend()} device={device.device_kind} "
    f"devices={jax.device_count()} jax={jax.__version__} normjax path={impl}"
  )
  if device.platform != "cpu" and peak is None:
    print("peak bandwidth unknown for this device: pass --peak-gbps")
  all_rows = []
  for shape in args.shapes:
    for norm in args.norms:
      rows = bench_shape(shape, norm, jnp.dtype(args.dtype), args)
      all_rows += rows
      by = {r["what"]: r for r in rows}
      print(
        f"\n{norm} {rows[0]['shape']} {args.dtype}:  wall median ms (min ms)  "
        "CPU ms  GB/s (at the median)" + ("  %peak" if peak else "") + "  page faults/call"
      )
      for r in rows:
        extra = f"  {r['gbps'] * 1e9 / peak:6.1%}" if peak else ""
        print(
          f"  {r['what']:16s} {r['median_ms']:9.2f} ({r['min_ms']:8.2f}) "
          f"{r['cpu_ms']:9.2f} {r['gbps']:7.1f}{extra} {r['faults']:9.0f}"
        )
      for what in ("fwd", "fwd+bwd"):
        ours, theirs = by[f"normjax {what}"], by[f"flax {what}"]
        print(
          f"  normjax/flax {what}: {ours['median_ms'] / theirs['median_ms']:.2f}x "
          f"(min {ours['min_ms'] / theirs['min_ms']:.2f}x, "
          f"CPU {ours['cpu_ms'] / theirs['cpu_ms']:.2f}x)"
        )
  if args.formulations:
    bench_formulations(args.shapes[0], args)
  if args.json:
    with open(args.json, "w") as f:
      json.dump(all_rows, f, indent=1)


if __name__ == "__main__":
  main()
