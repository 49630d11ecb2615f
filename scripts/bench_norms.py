r"""Time of normjax's norm layers against flax.linen.LayerNorm, and folded-inference speed-up.

  python scripts/bench_norms.py                      # both parts, (8192, 768) float32
  python scripts/bench_norms.py --part layers --only powernorm,unifiednorm
  python scripts/bench_norms.py --part folded --rounds 3
  python scripts/bench_norms.py --part conv --rounds 3 --calls 3

Part ``layers``: every case in ``CASES`` (a table: name, feature count, builder) on one
(8192, 768) float32 input in one process. Forward = ``y = norm(x)`` in the case's mode;
forward+backward = gradients of sum(y * dy) with respect to x and the parameters, plus, for
norms with backward-updated state (PowerNorm, UnifiedNorm), the state update that their custom
VJP carries out (the trainer computes exactly that). Baseline: ``flax.linen.LayerNorm()`` (flax
defaults, eps 1e-6). Timing is interleaved: every round times the baseline then each case
(``--calls`` calls after a warm-up call, jitted, ``block_until_ready``); the printed ratio is
the median over rounds of t_case / t_baseline from the same round, times are medians.

Part ``folded``: eval-mode forward of a ViT and a GPT-2 with LayerNorm against the same model
with UnifiedNorm folded into its linear layers (``normjax.surgery.folding.fold_norms``; the UN
paper reports ~31% faster inference on GPU) and against the model with no norm at all (the
bound a fold can reach). Same interleaved timing.

To add cases (e.g. conv norms on NHWC input), append ``Case`` rows to ``CASES``: ``shape``
overrides the input shape, ``build(features)`` returns an NNX module (``train`` picks its mode).

Part ``conv``: the convolutional norms as the ResNet uses them (``NormAct``: norm then ReLU,
or one EvoNorm layer that fuses its activation), training mode unless marked eval, on one
(64, 32, 32, 64) float32 NHWC input, against ``flax.linen.BatchNorm`` (train mode, flax
defaults) + ReLU; forward+backward = gradients w.r.t. x and the parameters. Then the WS convs
(3x3, 64 -> 64, the kernel standardized on every call) against ``flax.linen.Conv``.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from typing import Callable

import flax.linen
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from normjax.models import make_model
from normjax.models.resnet import NormAct
from normjax.models.ws_conv import ScaledWSConv, WSConv
from normjax.norms import make_norm
from normjax.surgery.folding import fold_norms
from normjax.variables import GradStat

SHAPE = (8192, 768)


@dataclasses.dataclass(frozen=True)
class Case:
  name: str
  build: Callable[[int], nnx.Module]
  train: bool = True
  shape: tuple[int, ...] | None = None  # default: SHAPE (last axis = features)
  features_offset: int = 0  # e.g. -1: CRMSNorm stores d-1 coordinates


def norm_case(name, train=True, label=None, **kwargs) -> Case:
  return Case(label or name, lambda c: make_norm(name, c, rngs=nnx.Rngs(0), **kwargs), train)


CASES = [
  norm_case("layernorm"),
  norm_case("rmsnorm"),
  dataclasses.replace(norm_case("crmsnorm"), features_offset=-1),
  norm_case("powernorm", label="powernorm train (groups 1)", warmup_steps=0),
  norm_case("powernorm", label="powernorm train (groups 12)", groups=12, warmup_steps=0),
  norm_case("powernorm", train=False, label="powernorm eval (groups 12)", groups=12),
  norm_case("unifiednorm", label="unifiednorm train", warmup_steps=0),
  norm_case(
    "unifiednorm",
    label="unifiednorm train (outlier filtration)",
    warmup_steps=0,
    outlier_filtration=True,
  ),
  norm_case("unifiednorm", train=False, label="unifiednorm eval"),
  norm_case("fakeln", label="fakeln live (train)"),
  norm_case("fakeln", label="fakeln frozen (train)", freeze_step=0),
  norm_case("batchnorm", label="batchnorm train"),
]


# ----------------------------------------------------------------------------- timing
def timed(fn, *args, calls: int) -> tuple[float, float]:
  """Median (wall, process CPU) seconds per call of a jitted ``fn``, after a warm-up call.

  CPU time (user + system of this process, all threads) is less sensitive than wall time to
  other processes sharing the machine."""
  jax.block_until_ready(fn(*args))
  walls, cpus = [], []
  for _ in range(calls):
    wall, cpu = time.perf_counter(), time.process_time()
    jax.block_until_ready(fn(*args))
    walls.append(time.perf_counter() - wall)
    cpus.append(time.process_time() - cpu)
  return statistics.median(walls), statistics.median(cpus)


def interleaved(baseline, candidates: dict, rounds: int, calls: int) -> dict:
  """{name: (wall, wall ratio, cpu ratio)}: medians over rounds of times and of per-round
  ratios to the baseline ``(fn, args)``; the baseline itself is ``'__baseline__'``."""
  rows = {name: [] for name in [*candidates, "__baseline__"]}
  for _ in range(rounds):
    base = timed(baseline[0], *baseline[1], calls=calls)
    rows["__baseline__"].append((base[0], 1.0, 1.0))
    for name, (fn, args) in candidates.items():
      wall, cpu = timed(fn, *args, calls=calls)
      rows[name].append((wall, wall / base[0], cpu / base[1]))
  return {
    name: tuple(statistics.median(r[i] for r in values) for i in range(3))
    for name, values in rows.items()
  }


# ----------------------------------------------------------------------------- layers
def layer_functions(case: Case, x, dy):
  """(forward, args), (forward+backward, args) of a case, both jitted."""
  module = case.build(x.shape[-1])
  if not case.train:
    module.eval()
  graph, *templates = nnx.split(module, nnx.Param, GradStat, ...)
  params, grad_stats, rest = (nnx.to_pure_dict(t) for t in templates)

  def apply(x, *pure):  # variables rebuilt inside the trace, as the trainer's ModelDef.merge
    states = [nnx.State(t) for t in templates]
    for state, values in zip(states, pure):
      nnx.replace_by_pure_dict(state, values)
    return nnx.merge(graph, *states)(x)

  def loss(x, params, grad_stats, rest):
    return jnp.sum(apply(x, params, grad_stats, rest) * dy)

  forward = jax.jit(apply)
  backward = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
  args = (x, params, grad_stats, rest)
  return (forward, args), (backward, args)


def flax_layernorm_functions(x, dy):
  ln = flax.linen.LayerNorm()
  variables = ln.init(jax.random.key(0), x)
  forward = jax.jit(lambda x, v: ln.apply(v, x))
  backward = jax.jit(jax.grad(lambda x, v: jnp.sum(ln.apply(v, x) * dy), argnums=(0, 1)))
  return (forward, (x, variables)), (backward, (x, variables))


def bench_layers(cases, rounds, calls):
  rng = np.random.default_rng(0)
  rows = []
  base_fwd, base_bwd = flax_layernorm_functions(
    jnp.asarray(rng.standard_normal(SHAPE), jnp.float32),
    jnp.asarray(rng.standard_normal(SHAPE), jnp.float32),
  )
  fwd, bwd = {}, {}
  for case in cases:
    shape = case.shape or SHAPE
    shape = (*shape[:-1], shape[-1] + case.features_offset)
    x = jnp.asarray(rng.standard_normal(shape) * 2 + 0.5, jnp.float32)
    dy = jnp.asarray(rng.standard_normal(shape), jnp.float32)
    fwd[case.name], bwd[case.name] = layer_functions(case, x, dy)
  results_fwd = interleaved(base_fwd, fwd, rounds, calls)
  results_bwd = interleaved(base_bwd, bwd, rounds, calls)
  rows.append(
    ("flax.linen.LayerNorm (baseline)", results_fwd["__baseline__"], results_bwd["__baseline__"])
  )
  for case in cases:
    rows.append((case.name, results_fwd[case.name], results_bwd[case.name]))
  print(
    f"\nNorm layers on {SHAPE} float32, {rounds} rounds x {calls} calls: median wall ms; "
    f"ratios = median over rounds of t / t_flax_LayerNorm (wall | CPU time)"
  )
  print(
    "| norm | fwd ms | fwd ratio wall / CPU | fwd+bwd ms | fwd+bwd ratio wall / CPU |\n"
    "|---|---|---|---|---|"
  )
  for name, (tf, rf, cf), (tb, rb, cb) in rows:
    print(
      f"| {name} | {tf * 1e3:.2f} | {rf:.2f}x / {cf:.2f}x | {tb * 1e3:.2f} | "
      f"{rb:.2f}x / {cb:.2f}x |"
    )


# ----------------------------------------------------------------------------- folded models
MODELS = {
  "vit": (
    dict(
      num_classes=1000,
      image_size=224,
      in_channels=3,
      patch_size=16,
      width=192,
      depth=12,
      num_heads=3,
      mlp_dim=768,
    ),
    (8, 224, 224, 3),
    "ViT-Ti/16, batch 8",
  ),
  "gpt2": (
    dict(vocab_size=8192, max_len=256, width=256, depth=6, num_heads=4),
    (8, 256),
    "GPT-2 width 256 depth 6 vocab 8192, batch 8 x 256 tokens",
  ),
}


def eval_function(model):
  model.eval()
  graph, state = nnx.split(model)
  return jax.jit(lambda state, x: nnx.merge(graph, state)(x)), state


def bench_folded(rounds, calls):
  for name, (kwargs, shape, label) in MODELS.items():
    rng = np.random.default_rng(1)
    x = (
      jnp.asarray(rng.integers(0, kwargs["vocab_size"], shape))
      if name == "gpt2"
      else jnp.asarray(rng.standard_normal(shape), jnp.float32)
    )
    build = lambda norm: make_model(name, rngs=nnx.Rngs(0), **kwargs, norm=norm)
    ln_fn, ln_state = eval_function(build("layernorm"))
    un = build("unifiednorm")
    un.eval()
    folded_fn, folded_state = eval_function(fold_norms(un))
    un_fn, un_state = eval_function(un)
    none_fn, none_state = eval_function(build("none"))
    results = interleaved(
      (ln_fn, (ln_state, x)),
      {
        "UnifiedNorm, not folded": (un_fn, (un_state, x)),
        "UnifiedNorm folded": (folded_fn, (folded_state, x)),
        "no norm at all": (none_fn, (none_state, x)),
      },
      rounds,
      calls,
    )
    print(
      f"\nEval forward, {label}, {rounds} rounds x {calls} calls: median wall ms; time "
      f"ratio to LayerNorm (median over rounds, wall | CPU); speed-up = 1/ratio - 1 (CPU)"
    )
    print("| model | ms | ratio wall / CPU | speed-up |\n|---|---|---|---|")
    base = results.pop("__baseline__")[0]
    print(f"| LayerNorm | {base * 1e3:.1f} | 1.00x / 1.00x | - |")
    for variant, (t, ratio, cpu_ratio) in results.items():
      print(
        f"| {variant} | {t * 1e3:.1f} | {ratio:.2f}x / {cpu_ratio:.2f}x | "
        f"{(1 / cpu_ratio - 1) * 100:+.0f}% |"
      )


# ----------------------------------------------------------------------------- conv norms
CONV_SHAPE = (64, 32, 32, 64)


class RegionNormBReLU(nnx.Module):
  """relu(RN-B(x, mask)) with a fixed mask (a 16x16 hole per image, as in inpainting)."""

  def __init__(self, features: int):
    self.norm = make_norm("region_norm_b", features, rngs=nnx.Rngs(0))
    hole = np.zeros(CONV_SHAPE[:3], bool)
    hole[:, 8:24, 8:24] = True
    self.hole = nnx.data(jnp.asarray(hole))

  def __call__(self, x):
    return jax.nn.relu(self.norm(x, mask=self.hole))


def conv_case(name, label=None, train=True, **kwargs) -> Case:
  return Case(
    label or f"{name} + relu",
    lambda c: NormAct(c, norm=name, norm_kwargs=kwargs, rngs=nnx.Rngs(0)),
    train,
    CONV_SHAPE,
  )


CONV_CASES = [
  conv_case("batchnorm", label="batchnorm + relu (normjax)"),
  conv_case("evonorm_b0", label="evonorm_b0 (fused act)"),
  conv_case("evonorm_s0", label="evonorm_s0 (fused act)"),
  conv_case("evonorm_b1", label="evonorm_b1 (fused act)"),
  conv_case("evonorm_s1", label="evonorm_s1 (fused act)"),
  conv_case("batch_channel_norm"),
  conv_case("batch_channel_norm", label="batch_channel_norm EstBN + relu", estimated=True),
  conv_case("ibn"),
  Case("region_norm_b + relu", RegionNormBReLU, True, CONV_SHAPE),
  conv_case("region_norm_l"),
  conv_case("groupnorm"),
  conv_case("instancenorm"),
  conv_case("alpha_bn", label="alpha_bn eval (alpha 0.1) + relu", train=False),
]


def flax_batchnorm_relu_functions(x, dy):
  bn = flax.linen.BatchNorm(use_running_average=False)
  variables = bn.init(jax.random.key(0), x)

  def apply(x, v):
    return jax.nn.relu(bn.apply(v, x, mutable=["batch_stats"])[0])

  forward = jax.jit(apply)
  backward = jax.jit(jax.grad(lambda x, v: jnp.sum(apply(x, v) * dy), argnums=(0, 1)))
  return (forward, (x, variables)), (backward, (x, variables))


def conv_functions(layer, x, dy, linen: bool):
  """(forward, args), (forward+backward w.r.t. x and parameters, args), jitted."""
  if linen:
    variables = layer.init(jax.random.key(0), x)
    apply = lambda x, v: layer.apply(v, x)
  else:
    graph, variables = nnx.split(layer)
    apply = lambda x, v: nnx.merge(graph, v)(x)
  backward = jax.grad(lambda x, v: jnp.sum(apply(x, v) * dy), argnums=(0, 1))
  return (jax.jit(apply), (x, variables)), (jax.jit(backward), (x, variables))


def print_table(title, baseline, rows, results_fwd, results_bwd):
  print(title)
  print(
    "| layer | fwd ms | fwd ratio wall / CPU | fwd+bwd ms | fwd+bwd ratio wall / CPU |\n"
    "|---|---|---|---|---|"
  )
  for name, key in [(baseline, "__baseline__")] + [(r, r) for r in rows]:
    (tf, rf, cf), (tb, rb, cb) = results_fwd[key], results_bwd[key]
    print(
      f"| {name} | {tf * 1e3:.2f} | {rf:.2f}x / {cf:.2f}x | {tb * 1e3:.2f} | "
      f"{rb:.2f}x / {cb:.2f}x |"
    )


def bench_conv(cases, rounds, calls):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal(CONV_SHAPE) * 2 + 0.5, jnp.float32)
  dy = jnp.asarray(rng.standard_normal(CONV_SHAPE), jnp.float32)
  base_fwd, base_bwd = flax_batchnorm_relu_functions(x, dy)
  fwd, bwd = {}, {}
  for case in cases:
    fwd[case.name], bwd[case.name] = layer_functions(case, x, dy)
  print_table(
    f"\nConvolutional norms on {CONV_SHAPE} float32 NHWC, {rounds} rounds x {calls} "
    f"calls: median wall ms; ratios = median over rounds of t / t_baseline "
    f"(wall | CPU time)",
    "flax.linen.BatchNorm + relu (baseline)",
    [c.name for c in cases],
    interleaved(base_fwd, fwd, rounds, calls),
    interleaved(base_bwd, bwd, rounds, calls),
  )
  features = CONV_SHAPE[-1]
  base_fwd, base_bwd = conv_functions(
    flax.linen.Conv(features, (3, 3), padding=((1, 1), (1, 1)), use_bias=False), x, dy, True
  )
  convs = {
    "WSConv 3x3": WSConv(features, features, 3, rngs=nnx.Rngs(0)),
    "ScaledWSConv 3x3 (gain, bias)": ScaledWSConv(features, features, 3, rngs=nnx.Rngs(0)),
  }
  fwd, bwd = {}, {}
  for name, layer in convs.items():
    fwd[name], bwd[name] = conv_functions(layer, x, dy, False)
  print_table(
    f"\nWeight-standardized convs, {features} -> {features}, on {CONV_SHAPE}: "
    f"ratios to flax.linen.Conv 3x3 (no bias)",
    "flax.linen.Conv 3x3 (baseline)",
    list(convs),
    interleaved(base_fwd, fwd, rounds, calls),
    interleaved(base_bwd, bwd, rounds, calls),
  )


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--part", choices=("layers", "folded", "conv", "all"), default="all")
  parser.add_argument("--only", default="", help="comma-separated case-name prefixes")
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--calls", type=int, default=5)
  args = parser.parse_args()
  print(f"jax {jax.__version__}, {jax.devices()[0].device_kind}, {jax.device_count()} device(s)")
  if args.part in ("layers", "all"):
    prefixes = [p for p in args.only.split(",") if p]
    cases = [c for c in CASES if not prefixes or any(c.name.startswith(p) for p in prefixes)]
    bench_layers(cases, args.rounds, args.calls)
  if args.part in ("folded", "all"):
    bench_folded(args.rounds, max(2, args.calls // 2))
  if args.part in ("conv", "all"):
    prefixes = [p for p in args.only.split(",") if p]
    cases = [c for c in CONV_CASES if not prefixes or any(c.name.startswith(p) for p in prefixes)]
    bench_conv(cases, args.rounds, args.calls)


if __name__ == "__main__":
  main()
