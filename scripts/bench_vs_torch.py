r"""normjax's training step against the PyTorch model a researcher would otherwise run.

  pip install torch==2.13.0 && pip install ".[bench]"   # the CPU wheel, then transformers
  python scripts/bench_vs_torch.py [--models gpt2,vit,resnet] [--rounds 5] [--steps 3]
      [--threads 2] [--profile DIR] [--also VAR=VALUE ...]

For each model the same architecture, shapes, dtype (float32), optimizer (AdamW, betas
(0.9, 0.999), eps 1e-8, weight decay 0.01, no clipping) and batch:

* gpt2: normjax ``GPT2`` vs ``transformers.GPT2LMHeadModel`` (width 256, 4 layers, 4 heads,
  context 256, byte vocabulary, batch 8; tanh GELU, tied head; loss: mean cross-entropy on
  explicit next-token targets in both);
* vit: normjax ``vit`` vs ``transformers.ViTForImageClassification`` (32x32x3 images,
  patch 4, width 192, 6 layers, 3 heads, MLP 768, CLS pooling, 10 classes, batch 64);
* resnet: normjax ``resnet`` (BatchNorm, basic blocks, ImageNet stem) vs
  ``transformers.ResNetForImageClassification`` (stages 64/128/256/512, one basic block each,
  224x224x3, batch 16).

Each normjax step is ``normjax.run.from_model(...).train_step`` jitted with the state
donated; each torch step is ``zero_grad(set_to_none) -> forward -> loss.backward() ->
AdamW(foreach=True).step()``. Rounds alternate the order; a round is the mean of
``--steps`` steps after one warm-up step; the figure is the median over rounds. torch uses
``--threads`` threads (``torch.set_num_threads``; give the machine's core count, which is what
XLA:CPU's thread pool uses). Also
printed: normjax's compiled FLOPs per step (XLA cost analysis), the achieved FLOP/s, and the
machine's measured float32 matmul rate (2048^3, both frameworks) as the limit.
``--profile DIR``: a ``jax.profiler`` trace of normjax's steps (``DIR/<model>_jax/``), its
per-op table (``DIR/<model>_jax_ops.md``, ``normjax.op_profile``: self time per HLO op and per
category, each dot's shape and GFLOP/s) and torch's profiler table (``DIR/<model>_torch.txt``).
``--also NORMJAX_ATTENTION=xla`` (repeatable) times normjax's step traced with that variable
set as well, the baseline of a change measured in the same run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time


def parse():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--models", default="gpt2,vit,resnet")
  p.add_argument("--rounds", type=int, default=5)
  p.add_argument("--steps", type=int, default=3)
  p.add_argument("--threads", type=int, default=2)
  p.add_argument("--profile", default=None)
  p.add_argument(
    "--also",
    action="append",
    default=[],
    metavar="VAR=VALUE",
    help="also time normjax's step traced with this environment variable set, e.g. "
    "NORMJAX_ATTENTION=xla (repeatable; the baseline of a change, in the same run)",
  )
  return p.parse_args()


ARGS = parse()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from normjax import hardware, op_profile, run  # noqa: E402
from normjax.models import MODELS  # noqa: E402

try:
  import torch
  import transformers
except ImportError:  # pragma: no cover
  sys.exit("needs torch and transformers: pip install torch==2.13.0 transformers")

torch.set_num_threads(ARGS.threads)
LR, BETAS, EPS, WD = 1e-4, (0.9, 0.999), 1e-8, 0.01


def peers():
  """name -> (normjax factory kwargs, task, torch model, batch (numpy), torch loss fn)."""
  rng = np.random.default_rng(0)
  out = {}
  t, v, w = 256, 256, 256
  tokens = rng.integers(0, v, (8, t + 1))
  out["gpt2"] = (
    dict(name="gpt2", vocab_size=v, max_len=t, width=w, depth=4, num_heads=4),
    "lm",
    transformers.GPT2LMHeadModel(
      transformers.GPT2Config(
        vocab_size=v,
        n_positions=t,
        n_embd=w,
        n_layer=4,
        n_head=4,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        activation_function="gelu_new",
      )
    ),
    {"inputs": tokens[:, :-1].astype(np.int32), "targets": tokens[:, 1:].astype(np.int32)},
    lambda m, b: torch.nn.functional.cross_entropy(
      m(input_ids=b["inputs"]).logits.reshape(-1, v), b["targets"].reshape(-1)
    ),
  )
  images = rng.standard_normal((64, 32, 32, 3)).astype(np.float32)
  out["vit"] = (
    dict(
      name="vit",
      num_classes=10,
      image_size=32,
      in_channels=3,
      patch_size=4,
      width=192,
      depth=6,
      num_heads=3,
      mlp_dim=768,
      pool="cls",
    ),
    "classification",
    transformers.ViTForImageClassification(
      transformers.ViTConfig(
        image_size=32,
        patch_size=4,
        num_channels=3,
        hidden_size=192,
        num_hidden_layers=6,
        num_attention_heads=3,
        intermediate_size=768,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        num_labels=10,
        hidden_act="gelu_pytorch_tanh",
      )
    ),
    {"image": images, "label": rng.integers(0, 10, 64).astype(np.int32)},
    lambda m, b: torch.nn.functional.cross_entropy(
      m(pixel_values=b["image"].permute(0, 3, 1, 2)).logits, b["label"]
    ),
  )
  big = rng.standard_normal((16, 224, 224, 3)).astype(np.float32)
  out["resnet"] = (
    dict(
      name="resnet",
      num_classes=10,
      in_channels=3,
      stage_sizes=(1, 1, 1, 1),
      width=64,
      stem="imagenet",
      block="basic",
      zero_init_residual=False,
    ),
    "classification",
    transformers.ResNetForImageClassification(
      transformers.ResNetConfig(
        embedding_size=64,
        hidden_sizes=[64, 128, 256, 512],
        depths=[1, 1, 1, 1],
        layer_type="basic",
        num_labels=10,
        downsample_in_first_stage=False,
      )
    ),
    {"image": big, "label": rng.integers(0, 10, 16).astype(np.int32)},
    lambda m, b: torch.nn.functional.cross_entropy(
      m(pixel_values=b["image"].permute(0, 3, 1, 2)).logits, b["label"]
    ),
  )
  return out


def normjax_step(kwargs, task, batch, env=None):
  """normjax's compiled step; ``env`` (VAR=VALUE) is set while it is traced."""
  if env:
    var, _, value = env.partition("=")
    old = os.environ.get(var)
    os.environ[var] = value
    try:
      return normjax_step(kwargs, task, batch)
    finally:
      os.environ.pop(var) if old is None else os.environ.__setitem__(var, old)
  kwargs = dict(kwargs)
  factory = MODELS.get(kwargs.pop("name"))
  make = lambda rngs: factory(**kwargs, rngs=rngs)
  tx = optax.adamw(LR, b1=BETAS[0], b2=BETAS[1], eps=EPS, weight_decay=WD)
  setup = run.from_model(make, tx, task=task)
  batch = jax.device_put(jax.tree.map(jnp.asarray, batch))
  state = {"s": jax.jit(setup.init_state)(jax.random.key(0))}
  compiled = jax.jit(setup.train_step, donate_argnums=(0,)).lower(state["s"], batch).compile()

  def step():
    state["s"], metrics = compiled(state["s"], batch)
    return metrics["loss"]

  sync = lambda: jax.block_until_ready(state["s"])
  return step, hardware.step_flops(compiled), sync, compiled


def torch_step(model, batch, loss_fn):
  model.train()
  opt = torch.optim.AdamW(
    model.parameters(), lr=LR, betas=BETAS, eps=EPS, weight_decay=WD, foreach=True
  )
  tb = {
    k: torch.from_numpy(np.asarray(v)).long() if v.dtype.kind == "i" else torch.from_numpy(v)
    for k, v in batch.items()
  }

  def step():
    opt.zero_grad(set_to_none=True)
    loss = loss_fn(model, tb)
    loss.backward()
    opt.step()
    return loss

  return step


def mean_time(step, steps, sync):
  step()
  sync()
  start = time.perf_counter()
  for _ in range(steps):
    step()
  sync()
  return (time.perf_counter() - start) / steps


def matmul_rate() -> tuple[float, float]:
  n = 2048
  a = jnp.ones((n, n), jnp.float32)
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  t = time.perf_counter()
  for _ in range(5):
    f(a).block_until_ready()
  xla = 2 * n**3 * 5 / (time.perf_counter() - t)
  b = torch.ones((n, n))
  b @ b
  t = time.perf_counter()
  for _ in range(5):
    b @ b
  return xla, 2 * n**3 * 5 / (time.perf_counter() - t)


def main():
  print(
    f"jax {jax.__version__}, torch {torch.__version__}, transformers "
    f"{transformers.__version__}, {ARGS.threads} threads"
  )
  xla_peak, torch_peak = matmul_rate()
  print(
    f"float32 matmul 2048^3: XLA {xla_peak / 1e9:.1f} GFLOP/s, torch {torch_peak / 1e9:.1f} GFLOP/s"
  )
  also = [f"normjax {env}" for env in ARGS.also]
  print(
    "| model | torch ms/step | normjax ms/step | normjax / torch | normjax GFLOP/step | "
    "normjax GFLOP/s | of matmul rate |"
    + "".join(f" {a} ms/step | normjax / ({a}) |" for a in also)
  )
  print("|---|---|---|---|---|---|---|" + "---|---|" * len(also))
  for name, (kwargs, task, model, batch, loss_fn) in peers().items():
    if name not in ARGS.models.split(","):
      continue
    nj, flops, nj_sync, compiled = normjax_step(kwargs, task, batch)
    pairs = [("normjax", nj, nj_sync), ("torch", torch_step(model, batch, loss_fn), lambda: None)]
    for label, env in zip(also, ARGS.also):
      step, _, sync, _ = normjax_step(kwargs, task, batch, env=env)
      pairs.append((label, step, sync))
    times = {key: [] for key, _, _ in pairs}
    for r in range(ARGS.rounds):
      for key, step, sync in pairs if r % 2 == 0 else pairs[::-1]:
        times[key].append(mean_time(step, ARGS.steps, sync))
    med = {k: statistics.median(v) for k, v in times.items()}
    rate = flops / med["normjax"] if flops else float("nan")
    print(
      f"| {name} | {med['torch'] * 1e3:.1f} | {med['normjax'] * 1e3:.1f} | "
      f"{med['normjax'] / med['torch']:.3f} | {flops / 1e9:.2f} | {rate / 1e9:.1f} | "
      f"{rate / xla_peak:.2f} |"
      + "".join(f" {med[a] * 1e3:.1f} | {med['normjax'] / med[a]:.3f} |" for a in also),
      flush=True,
    )
    if ARGS.profile:
      write_profiles(name, nj, nj_sync, compiled, med["normjax"], pairs[1][1])


def write_profiles(name, nj, nj_sync, compiled, wall_s, pt):
  """``DIR/<model>_jax/`` (trace), ``<model>_jax_ops.md`` (per-op table), ``<model>_torch.txt``."""
  os.makedirs(ARGS.profile, exist_ok=True)

  def one_step():
    nj()
    nj_sync()

  measured = op_profile.measure(
    one_step,
    compiled.as_text(),
    steps=ARGS.steps,
    trace_dir=os.path.join(ARGS.profile, f"{name}_jax"),
  )
  with open(os.path.join(ARGS.profile, f"{name}_jax_ops.md"), "w") as f:
    f.write(op_profile.table(measured, steps=ARGS.steps, wall_s=wall_s) + "\n")
  with torch.profiler.profile() as prof:
    mean_time(pt, ARGS.steps, lambda: None)
  with open(os.path.join(ARGS.profile, f"{name}_torch.txt"), "w") as f:
    f.write(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=40))


if __name__ == "__main__":
  main()
