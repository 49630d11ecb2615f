"""A probe for norms with backward-updated state: the input is a parameter, so one train step
(``value_and_grad_with_backward_state``, as the trainer's) returns dL/dx, the parameter
gradients and the new state, for loss = sum(norm(x, mask) * w) (so dL/dy = w)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from normjax.state import ModelDef, split, value_and_grad_with_backward_state


class Probe(nnx.Module):
  def __init__(self, x, norm):
    self.x = nnx.Param(x)
    self.norm = norm

  def __call__(self, mask):
    return self.norm(self.x[...], mask=mask)


def make_probe(make_norm, shape):
  """(model_def, params, model_state) of a Probe around ``make_norm(rngs)``."""
  make = lambda rngs: Probe(jnp.zeros(shape, jnp.float32), make_norm(rngs))
  params, state = split(make(nnx.Rngs(0)))
  return ModelDef.create(make), params, state


def _step(model_def, params, state, w, mask):
  def loss_fn(params, state):
    model = model_def.merge(params, state, train=True)
    y = model(mask)
    return jnp.sum(y * w), (split(model)[1], y)

  (_, y), grads, new_state = value_and_grad_with_backward_state(
    loss_fn, params, state, model_def.grad_stat_mask
  )
  return y, grads, new_state


def train_step(model_def):
  """jitted ``step(params, state, w, mask) -> (y, grads, new_state)``."""
  return jax.jit(functools.partial(_step, model_def))


def with_x(params, x):
  return {**params, "x": jnp.asarray(x, jnp.float32)}


def run_sharded(step, params, state, w, mask, devices=8):
  """``step`` with x, w and mask split over ``devices`` along the batch axis."""
  mesh = jax.make_mesh((devices,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  batch = NamedSharding(mesh, P("data"))
  params = {**params, "x": jax.device_put(params["x"], batch)}
  with jax.set_mesh(mesh):
    return step(params, state, jax.device_put(w, batch), jax.device_put(mask, batch))


def assert_close(actual, expected, rtol=2e-4, atol=2e-5, msg=""):
  np.testing.assert_allclose(
    np.asarray(actual, np.float64), expected, rtol=rtol, atol=atol, err_msg=msg
  )


def random_mask(rng, shape, keep=0.75):
  mask = rng.random(shape) < keep
  mask.reshape(-1)[0] = True
  return mask
