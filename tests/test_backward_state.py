"""The shared mechanism for state updated in the backward pass (PowerNorm/UN-style)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from normjax.norms.backward_state import GradStat, backward_state_op
from normjax.state import ModelDef, split, value_and_grad_with_backward_state

MOMENTUM = 0.75


def _forward(x, params, state, static):
  return x * params["scale"], x


def _backward(x, state, static, dy):
  # dx uses the OLD statistic; the statistic becomes an EMA of mean(dy * x) per channel.
  g = dy * state["ema"]
  new = {"ema": MOMENTUM * state["ema"] + (1 - MOMENTUM) * jnp.mean(dy * x, axis=0)}
  return g, {"scale": jnp.sum(dy * x, axis=0)}, new


toy_op = backward_state_op(_forward, _backward)


class ToyNorm(nnx.Module):
  def __init__(self, n, rngs):
    self.scale = nnx.Param(jnp.full((n,), 2.0))
    self.ema = GradStat(jnp.ones((n,)))
    self.calls = nnx.BatchStat(jnp.zeros((), jnp.int32))

  def __call__(self, x):
    self.calls.value += 1
    return toy_op(x, {"scale": self.scale.value}, {"ema": self.ema.value}, None)


class Toy(nnx.Module):
  def __init__(self, rngs):
    self.lin = nnx.Linear(3, 4, rngs=rngs)
    self.norm = ToyNorm(4, rngs)
    self.head = nnx.Linear(4, 1, rngs=rngs)

  def __call__(self, x):
    return self.head(self.norm(self.lin(x)))


def _step(model_def, params, model_state, x):
  def loss_fn(params, model_state):
    model = model_def.merge(params, model_state, train=True)
    return jnp.mean(model(x) ** 2), (split(model)[1], None)

  (loss, _), grads, new_state = value_and_grad_with_backward_state(
    loss_fn, params, model_state, model_def.grad_stat_mask
  )
  return grads, new_state


def _setup():
  model_def = ModelDef.create(Toy)
  params, model_state = split(Toy(nnx.Rngs(0)))
  x = jax.random.normal(jax.random.key(1), (16, 3))
  return model_def, params, model_state, x


def test_mask_marks_only_grad_stats():
  model_def = ModelDef.create(Toy)
  assert model_def.grad_stat_mask == {"norm": {"ema": True, "calls": False}}


def test_backward_updates_state_and_forward_state_is_kept():
  model_def, params, model_state, x = _setup()
  grads, new_state = jax.jit(functools.partial(_step, model_def))(params, model_state, x)
  # Independent computation: dy at the norm output for loss = mean(head(h)^2).
  h = x @ params["lin"]["kernel"] + params["lin"]["bias"]
  out = (h * params["norm"]["scale"]) @ params["head"]["kernel"] + params["head"]["bias"]
  dy = (2 * out / out.size) @ params["head"]["kernel"].T
  expected = MOMENTUM * 1.0 + (1 - MOMENTUM) * np.mean(dy * h, axis=0)
  np.testing.assert_allclose(new_state["norm"]["ema"], expected, rtol=1e-5)
  assert int(new_state["norm"]["calls"]) == 1
  np.testing.assert_allclose(grads["norm"]["scale"], np.sum(dy * h, axis=0), rtol=1e-5)
  # dx used the old statistic (ones): the kernel gradient is x^T (dy * 1).
  np.testing.assert_allclose(grads["lin"]["kernel"], x.T @ dy, rtol=1e-5)
  assert "ema" not in grads.get("norm", {})


def test_sharded_equals_unsharded():
  model_def, params, model_state, x = _setup()
  step = jax.jit(functools.partial(_step, model_def))
  mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  xs = jax.device_put(x, NamedSharding(mesh, P("data")))
  expected = step(params, model_state, x)
  with jax.set_mesh(mesh):
    got = step(params, model_state, xs)
  for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(got)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
