"""normjax.kernels.batch_norm: the custom_vjp against the autodiff of the formula."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from normjax import kernels
from normjax.kernels.batch_norm import batch_norm_train
from normjax.norms.basic import batch_norm


def formula(x, scale, bias, eps):
  axes = tuple(range(x.ndim - 1))
  mean = jnp.mean(x, axes)
  var = jnp.mean(jnp.square(x - mean), axes)
  return (x - mean) * jax.lax.rsqrt(var + eps) * scale + bias, mean, var


@pytest.mark.parametrize("shape", [(4, 5, 3), (2, 7, 9, 6), (33, 8)])
def test_forward_and_every_cotangent_match_autodiff_float64(shape):
  """Cotangents on y, mean and var (the last two are zero in BatchNorm, but must be right)."""
  with jax.enable_x64(True):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal(shape) * 2 + 0.5)
    c = shape[-1]
    scale, bias = jnp.asarray(rng.uniform(0.5, 2, c)), jnp.asarray(rng.standard_normal(c))
    out, vjp = jax.vjp(lambda *a: batch_norm_train(*a, 1e-5), x, scale, bias)
    ref, ref_vjp = jax.vjp(lambda *a: formula(*a, 1e-5), x, scale, bias)
    for a, b in zip(out, ref):
      np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    cot = (
      jnp.asarray(rng.standard_normal(shape)),
      jnp.asarray(rng.standard_normal(c)),
      jnp.asarray(rng.standard_normal(c)),
    )
    for a, b in zip(vjp(cot), ref_vjp(cot)):
      np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-11)


def test_float32_statistics_stay_accurate_over_many_rows():
  """50176 rows: the column sums must keep the pairwise reduction's accuracy."""
  x = jax.random.normal(jax.random.key(0), (16, 56, 56, 8)) * 3 + 1
  _, mean, var = jax.jit(lambda x: batch_norm_train(x, jnp.ones(8), jnp.zeros(8), 1e-5))(x)
  x64 = np.asarray(x, np.float64).reshape(-1, 8)
  np.testing.assert_allclose(mean, x64.mean(0), rtol=0, atol=1e-6)
  np.testing.assert_allclose(var, x64.var(0), rtol=1e-6)


def test_batch_norm_uses_the_kernel_and_matches_the_reference_path():
  x = jax.random.normal(jax.random.key(1), (8, 6, 6, 5), jnp.float32)
  params = {"scale": jnp.linspace(0.5, 1.5, 5), "bias": jnp.linspace(-1, 1, 5)}
  state = {"mean": jnp.zeros(5), "var": jnp.ones(5)}
  dy = jax.random.normal(jax.random.key(2), x.shape)

  def run(params, x):
    (y, new), vjp = jax.vjp(
      lambda p, x: batch_norm(x, p, state, train=True), params, x, has_aux=False
    )
    return y, new, vjp((dy, jax.tree.map(jnp.zeros_like, new)))

  jaxpr = str(jax.make_jaxpr(lambda p, x: batch_norm(x, p, state, train=True))(params, x))
  assert "custom_vjp_call" in jaxpr
  fused = run(params, x)
  with kernels.use_implementation("reference"):
    assert "custom_vjp_call" not in str(
      jax.make_jaxpr(lambda p, x: batch_norm(x, p, state, train=True))(params, x)
    )
    reference = run(params, x)
  for a, b in zip(jax.tree.leaves(fused), jax.tree.leaves(reference)):
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5)


def test_no_affine_parameters():
  x = jax.random.normal(jax.random.key(3), (10, 4))
  state = {"mean": jnp.zeros(4), "var": jnp.ones(4)}
  grad = jax.grad(lambda x: jnp.sum(batch_norm(x, {}, state, train=True)[0] ** 3))(x)
  with kernels.use_implementation("reference"):
    ref = jax.grad(lambda x: jnp.sum(batch_norm(x, {}, state, train=True)[0] ** 3))(x)
  np.testing.assert_allclose(grad, ref, rtol=2e-5, atol=2e-5)
