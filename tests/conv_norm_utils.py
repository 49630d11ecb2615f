"""Shared helpers for the convolutional-norm tests: data, float64 references, sharding check."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

RNG = np.random.default_rng(0)


def data(shape, offset=1.0, spread=2.0, rng=RNG):
  return (offset + spread * rng.standard_normal(shape)).astype(np.float32)


def randomize(module, names, rng=RNG, positive=()):
  """Random values for the module's named parameters (positive ones in [0.5, 1.5])."""
  for name in names:
    var = getattr(module, name)
    values = (0.5 + rng.random(var.shape)) if name in positive else rng.standard_normal(var.shape)
    var[...] = jnp.asarray(values, jnp.float32)
  return module


def f64(x):
  return np.asarray(x, np.float64)


def batch_stats(x, axes=None):
  """Per-channel mean and population variance over every axis but the last (float64)."""
  x = f64(x)
  axes = tuple(range(x.ndim - 1)) if axes is None else axes
  return x.mean(axes, keepdims=True), x.var(axes, keepdims=True)


def conv2d_ref(x, w, *, stride=1, padding=(0, 0), dilation=1):
  """NHWC x HWIO convolution in float64, explicit (top/left = bottom/right) zero padding."""
  x, w = f64(x), f64(w)
  x = np.pad(x, ((0, 0), (padding[0],) * 2, (padding[1],) * 2, (0, 0)))
  kh, kw = w.shape[:2]
  out_h = (x.shape[1] - dilation * (kh - 1) - 1) // stride + 1
  out_w = (x.shape[2] - dilation * (kw - 1) - 1) // stride + 1
  out = np.zeros((x.shape[0], out_h, out_w, w.shape[-1]))
  for i in range(kh):
    for j in range(kw):
      patch = x[
        :,
        i * dilation : i * dilation + stride * (out_h - 1) + 1 : stride,
        j * dilation : j * dilation + stride * (out_w - 1) + 1 : stride,
      ]
      out += np.einsum("bhwc,co->bhwo", patch, w[i, j])
  return out


def assert_sharded_equals_unsharded(module, *inputs, rtol=1e-5, atol=1e-5):
  """A training-mode forward (output and new state) under jit is the same with the batch
  split over 8 devices (``P('data')``) as on one device: batch statistics are global."""
  assert jax.device_count() == 8, "tests/conftest.py should give 8 virtual CPU devices"
  graphdef, state = nnx.split(module)

  @jax.jit
  def forward(state, *inputs):
    m = nnx.merge(graphdef, state)
    return m(*inputs[:1], **({"mask": inputs[1]} if len(inputs) > 1 else {})), nnx.state(m)

  inputs = [jnp.asarray(v) for v in inputs]
  y_ref, state_ref = forward(state, *inputs)
  mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  with jax.set_mesh(mesh):
    sharded = [jax.device_put(v, NamedSharding(mesh, P("data"))) for v in inputs]
    y, new_state = forward(state, *sharded)
  assert y.sharding.spec and y.sharding.spec[0] == "data"
  np.testing.assert_allclose(y, y_ref, rtol=rtol, atol=atol)
  for a, b in zip(jax.tree.leaves(new_state), jax.tree.leaves(state_ref)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  return y_ref, state_ref


def per_shard_differs(shape, rng=RNG):
  """Data whose first half is shifted, so per-device statistics differ from global ones."""
  x = data(shape, rng=rng)
  x[: shape[0] // 2] += 4.0
  return x
