r"""SOFT on digits: accuracy over seeds, approximation error vs the exact Gaussian attention, and
gradient agreement of the three inverse backwards, on trained features.

  python scripts/soft_experiment.py --arms soft:post,softmax:post --seeds 3 --steps 150 \
      --depth 2 --warmup 15 --out experiments/soft/seeds.jsonl

For every arm ``attention:placement`` (``configs/vit_soft.py:attention=...,placement=...``) and
seed s (``--steps``, ``--warmup`` steps of LR warmup and ``--depth`` blocks override the
config's 1000, 100 and 4): ``normjax.run.build`` once per arm, the trainer's jitted train/eval
steps, a fresh ``init_state(key(s))`` with the data order of seed s, test accuracy. Then, on
the first 256 test images, for each block whose attention is 'soft' or 'soft_norm', with the
block's own attention input (``normjax.models.soft_attention`` for the formulas):

* ``kernel_error``: ||A1 M A1^T - kappa(Q, Q)||_F / ||kappa(Q, Q)||_F, the Nystrom-type
  approximation of the exact N x N Gaussian kernel, M = the arm's inverse of A2 (soft: the
  Newton iterate ~ (A2 + .01 I)^-1; soft_norm: its A2^+ iterate, before the D^-1/2 scaling);
* ``output_error`` (soft only): ||A1 M (A1^T V) - kappa(Q, Q) V|| / ||kappa(Q, Q) V||;
* ``newton_error``: ||V_20 - inv(A2 + .01 I)|| / ||inv(A2 + .01 I)|| (soft) or vs pinv(A2)
  (soft_norm), float64 LAPACK on the float32 A2; ``cond``: median cond(A2 + .01 I);
  ``halvings``: SOFT-Norm's step-size halvings;
* ``swap_accuracy``: test accuracy of the trained network with its attention replaced by the
  exact 'gaussian' one (same W_q, W_v, DWConv, projection; landmarks unused);
* ``grad_cos_*`` (soft only): cosine between the parameter gradients of the training loss on
  one batch with the closed-form backward (SOFT's), autodiff through the 20 Newton steps, and
  autodiff of ``jnp.linalg.inv(A2 + .01 I)``.
One JSON line per (arm, seed) on stdout and ``--out``.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from normjax import data as nj_data
from normjax import run
from normjax.config_args import sibling_config
from normjax.models import soft_attention as sa
from normjax.tasks import loss_and_sums

CONFIG = "configs/vit_soft.py"


def relative(a, b):
  return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


def block_mechanism(attn, h):
  """The approximation and Newton numbers of one SOFT attention on its input h (B, N, C)."""
  q = attn.heads(attn.query(h))
  v = attn.heads(attn.value(h))
  q = q / jnp.sqrt(jnp.sqrt(jnp.asarray(q.shape[-1], q.dtype)))
  landmarks = attn.landmarks(q)
  a1, a2 = sa.gaussian_kernel(q, landmarks), sa.gaussian_kernel(landmarks, landmarks)
  full = sa.gaussian_kernel(q, q)
  a64 = np.asarray(a2, np.float64)
  eye = np.eye(a64.shape[-1])
  if attn.kind == "soft":
    middle = sa.newton_inverse(a2, attn.newton_iters, attn.reg)
    target, halvings = np.linalg.inv(a64 + attn.reg * eye), 0
  else:
    middle, halvings = sa.symmetric_newton_pinv(a2, attn.newton_iters)
    target = np.linalg.pinv(a64, hermitian=True)
  approx = a1 @ middle @ jnp.swapaxes(a1, -1, -2)
  out = {
    "kernel_error": relative(approx, full),
    "newton_error": float(np.linalg.norm(np.asarray(middle) - target) / np.linalg.norm(target)),
    "cond": float(np.median(np.linalg.cond(a64 + 0.01 * eye))),
    "halvings": int(halvings),
  }
  if attn.kind == "soft":
    out["output_error"] = relative(a1 @ middle @ (jnp.swapaxes(a1, -1, -2) @ v), full @ v)
  return out


def mechanism(model, images):
  """Per-block numbers, walking the ViT's blocks with each block's attention input."""
  x = model.patch_embedding(images)
  x = x.reshape(x.shape[0], -1, x.shape[-1]) + model.position_embedding[...]
  rows = []
  for block in model.transformer.blocks:
    rows.append(block_mechanism(block.attn, block._attention_inputs(x)[0]))
    x = block(x)
  return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}


def gaussian_params(params):
  """The same parameters without the landmark ones (the 'gaussian' model's layout)."""
  params = jax.tree.map(lambda a: a, params)
  for block in params["transformer"]["blocks"].values():
    block["attn"].pop("landmark_kernel")
    block["attn"].pop("landmark_norm")
  return params


def gradient_agreement(setup, state, batch):
  """Cosines between the loss gradients with the three backwards of the Newton inverse."""
  variants = {
    "closed_form": sa.newton_inverse,
    "unrolled": lambda a, iters, reg: sa._newton_forward(a, iters, reg),
    "exact_inv": lambda a, iters, reg: jnp.linalg.inv(
      a + reg * jnp.eye(a.shape[-1], dtype=a.dtype)
    ),
  }
  original, grads = sa.newton_inverse, {}
  try:
    for name, fn in variants.items():
      sa.newton_inverse = fn

      def loss(params):
        model = setup.model_def.merge(params, state["model_state"], train=False)
        return loss_and_sums(setup.task, model(setup.task.inputs(batch)), batch)[0]

      flat = jax.tree.leaves(jax.jit(jax.grad(loss))(state["params"]))
      grads[name] = jnp.concatenate([g.ravel() for g in flat])
  finally:
    sa.newton_inverse = original
  cos = lambda a, b: float(a @ b / (jnp.linalg.norm(a) * jnp.linalg.norm(b)))
  return {
    "grad_cos_closed_vs_exact": cos(grads["closed_form"], grads["exact_inv"]),
    "grad_cos_unrolled_vs_exact": cos(grads["unrolled"], grads["exact_inv"]),
    "grad_cos_closed_vs_unrolled": cos(grads["closed_form"], grads["unrolled"]),
  }


def run_arm(arm: str, seeds: range, steps: int, out: str | None, depth: int, warmup: int):
  attention, placement = arm.split(":")
  config = sibling_config(CONFIG, "vit_soft", f"attention={attention},placement={placement}")
  config.total_steps, config.schedule.warmup_steps, config.model.depth = steps, warmup, depth
  setup = run.build(config, validate=False)
  train_step, eval_step = jax.jit(setup.train_step), jax.jit(setup.eval_step)
  init = jax.jit(setup.init_state)
  swap = None
  if attention in ("soft", "soft_norm"):
    swap_config = sibling_config(CONFIG, "vit_soft", f"attention=gaussian,placement={placement}")
    swap_config.model.depth = depth
    swap = run.build(swap_config, validate=False)
    swap_eval = jax.jit(swap.eval_step)
  evaluate = lambda fn: run.evaluate(
    fn, config.data, batch_size=config.eval_batch_size, task=setup.task
  )["eval_accuracy"]
  test = next(nj_data.eval_iterator(config.data, global_batch_size=256))
  for seed in seeds:
    start = time.time()
    state = init(jax.random.key(seed))
    batches = nj_data.train_iterator(config.data, global_batch_size=config.batch_size, seed=seed)
    for _ in range(steps):
      batch = next(batches)
      state, metrics = train_step(state, batch)
    row = {"arm": arm, "seed": seed, "steps": steps, "depth": depth, "warmup": warmup}
    row["train_loss"] = float(metrics["loss"])
    row["accuracy"] = evaluate(lambda b: eval_step(state, b))
    row["seconds"] = round(time.time() - start, 1)
    if swap is not None:
      model = setup.model_def.merge(state["params"], state["model_state"], train=False)
      row.update(mechanism(model, setup.task.inputs(test)))
      swapped = dict(state, params=gaussian_params(state["params"]))
      swapped["opt_state"] = None
      row["swap_accuracy"] = evaluate(lambda b: swap_eval(swapped, b))
      if attention == "soft":
        row.update(gradient_agreement(setup, state, batch))
    line = json.dumps(row)
    print(line, flush=True)
    if out:
      with open(out, "a") as f:
        f.write(line + "\n")


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--arms", default="softmax:post,gaussian:post,soft:post,soft_norm:post")
  parser.add_argument("--seeds", type=int, default=3)
  parser.add_argument("--first_seed", type=int, default=0)
  parser.add_argument("--steps", type=int, default=1000)
  parser.add_argument("--depth", type=int, default=4)
  parser.add_argument("--warmup", type=int, default=100)
  parser.add_argument("--out", default=None)
  args = parser.parse_args()
  for arm in args.arms.split(","):
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    run_arm(arm, seeds, args.steps, args.out, args.depth, args.warmup)


if __name__ == "__main__":
  main()
