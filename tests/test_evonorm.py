"""EvoNorm B0/S0/B1/S1 against float64 references written from the formulas."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from normjax.models.resnet import NormAct
from normjax.norms import evonorm, make_norm, uses_batch_statistics
from tests import conv_norm_utils as u

EPS = 1e-5


def sigmoid(z):
  return 1 / (1 + np.exp(-z))


def group_std(x, groups, eps):
  b, h, w, c = x.shape
  g = x.reshape(b, h, w, groups, c // groups)
  var = g.var(axis=(1, 2, 4), keepdims=True)
  return np.broadcast_to(np.sqrt(var + eps), g.shape).reshape(x.shape)


def ref_b0(x, gamma, beta, v, var, eps=EPS):
  left = np.sqrt(var + eps)
  right = v * x + np.sqrt(x.var(axis=(1, 2), keepdims=True) + eps)
  return x / np.maximum(left, right) * gamma + beta


def ref_b1(x, gamma, beta, var, eps=EPS):
  left = np.sqrt(var + eps)
  right = (x + 1) * np.sqrt((x**2).mean(axis=(1, 2), keepdims=True) + eps)
  return x / np.maximum(left, right) * gamma + beta


def ref_s0(x, gamma, beta, v, groups, eps=EPS):
  return x * sigmoid(v * x) / group_std(x, groups, eps) * gamma + beta


def ref_s1(x, gamma, beta, groups, eps=EPS):
  return x * sigmoid(x) / group_std(x, groups, eps) * gamma + beta


def _module(name, channels, **kwargs):
  norm = make_norm(name, channels, rngs=nnx.Rngs(0), **kwargs)
  names = ["scale", "bias"] + (["v"] if getattr(norm, "v", None) is not None else [])
  return u.randomize(norm, names)


def _params(norm):
  return [u.f64(getattr(norm, n)[...]) for n in ("scale", "bias")]


def test_group_count_search_follows_tensorflow():
  assert evonorm.evonorm_groups(64, 32) == 32
  assert evonorm.evonorm_groups(20, 8) == 5  # 8, 7, 6 do not divide 20
  assert evonorm.evonorm_groups(12, 32) == 12  # more groups than channels
  assert evonorm.evonorm_groups(7, 4) == 1
  assert make_norm("evonorm_s0", 20, num_groups=8, rngs=nnx.Rngs(0)).num_groups == 5
  with pytest.raises(ValueError, match="num_groups=0"):
    evonorm.evonorm_groups(8, 0)


@pytest.mark.parametrize("channels,groups", [(12, 32), (20, 8)])
def test_sample_based_variants_match_reference(channels, groups):
  x = u.data((3, 5, 4, channels))
  for name in ("evonorm_s0", "evonorm_s1"):
    norm = _module(name, channels, num_groups=groups)
    gamma, beta = _params(norm)
    g = evonorm.evonorm_groups(channels, groups)
    expected = (
      ref_s0(u.f64(x), gamma, beta, u.f64(norm.v[...]), g)
      if name == "evonorm_s0"
      else ref_s1(u.f64(x), gamma, beta, g)
    )
    np.testing.assert_allclose(norm(jnp.asarray(x)), expected, rtol=2e-5, atol=2e-5, err_msg=name)
    # per-sample: one example's output does not depend on the others
    np.testing.assert_allclose(norm(jnp.asarray(x[1:2])), expected[1:2], rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("name", ["evonorm_b0", "evonorm_b1"])
def test_batch_variants_train_update_and_eval(name):
  x = u.data((4, 5, 5, 6))
  norm = _module(name, 6)
  old = 0.5 + u.RNG.random(6)
  norm.var[...] = jnp.asarray(old, jnp.float32)
  gamma, beta = _params(norm)
  ref = (
    (lambda x, var: ref_b0(x, gamma, beta, u.f64(norm.v[...]), var))
    if name == "evonorm_b0"
    else (lambda x, var: ref_b1(x, gamma, beta, var))
  )
  _, batch_var = u.batch_stats(x)
  np.testing.assert_allclose(norm(jnp.asarray(x)), ref(u.f64(x), batch_var), rtol=2e-5, atol=2e-5)
  # running variance: r <- 0.9 r + 0.1 var_bhw (TF decay 0.9, population variance)
  np.testing.assert_allclose(norm.var[...], 0.9 * old + 0.1 * batch_var.reshape(-1), rtol=1e-5)
  running = u.f64(norm.var[...])
  norm.eval()
  y_eval = norm(jnp.asarray(x))
  np.testing.assert_allclose(y_eval, ref(u.f64(x), running), rtol=2e-5, atol=2e-5)
  np.testing.assert_array_equal(norm.var[...], running)  # no update in eval
  np.testing.assert_allclose(norm(jnp.asarray(x[:1])), y_eval[:1], rtol=1e-6, atol=1e-6)


def test_no_nonlinearity_form_is_affine_only_as_tensorflow():
  x = u.data((2, 3, 3, 8))
  for name in ("evonorm_b0", "evonorm_s0", "evonorm_b1", "evonorm_s1"):
    norm = _module(name, 8, apply_act=False)
    gamma, beta = _params(norm)
    np.testing.assert_allclose(
      norm(jnp.asarray(x)), u.f64(x) * gamma + beta, rtol=1e-6, atol=1e-6, err_msg=name
    )
    assert set(nnx.state(norm, nnx.Param)) == {"scale", "bias"}
    assert not jax.tree.leaves(nnx.state(norm, nnx.BatchStat))


def test_defaults_and_resnet_unit():
  b0 = make_norm("evonorm_b0", 64, rngs=nnx.Rngs(0))
  s0 = make_norm("evonorm_s0", 64, rngs=nnx.Rngs(0))
  assert (b0.epsilon, b0.momentum, s0.epsilon, s0.num_groups) == (1e-5, 0.9, 1e-5, 32)
  for norm in (b0, s0):
    for name in ("scale", "v"):
      np.testing.assert_array_equal(getattr(norm, name)[...], 1.0)
    np.testing.assert_array_equal(norm.bias[...], 0.0)
  np.testing.assert_array_equal(b0.var[...], 1.0)
  assert uses_batch_statistics("evonorm_b0") and uses_batch_statistics("evonorm_b1")
  assert not uses_batch_statistics("evonorm_s0") and not uses_batch_statistics("evonorm_s1")
  # in a ResNet: one layer replaces norm + ReLU; the last norm starts with gamma = 0
  unit = NormAct(8, norm="evonorm_s0", norm_kwargs={}, rngs=nnx.Rngs(0))
  assert not unit.apply_relu and unit.norm.apply_act
  last = NormAct(
    8, norm="evonorm_b0", norm_kwargs={}, apply_act=False, zero_init_scale=True, rngs=nnx.Rngs(0)
  )
  assert not last.norm.apply_act
  np.testing.assert_array_equal(last(jnp.ones((2, 3, 3, 8))), 0.0)


def test_gradients_are_finite_and_bfloat16_stays_bfloat16():
  x = jnp.asarray(u.data((2, 4, 4, 16)))
  for name in ("evonorm_b0", "evonorm_s0", "evonorm_b1", "evonorm_s1"):
    norm = make_norm(name, 16, rngs=nnx.Rngs(0))
    function = getattr(evonorm, name)
    state = {"var": jnp.ones(16)} if name.startswith("evonorm_b") else None
    grad = jax.jit(
      jax.grad(lambda x: jnp.sum(function(x, norm.params(), state, train=True)[0] ** 2))
    )(x)
    assert np.isfinite(np.asarray(grad)).all() and np.abs(np.asarray(grad)).max() > 0, name
    assert norm(x.astype(jnp.bfloat16)).dtype == jnp.bfloat16


@pytest.mark.parametrize("name", ["evonorm_b0", "evonorm_b1"])
def test_batch_variants_sharded_equal_unsharded(name):
  norm = _module(name, 8)
  x = u.per_shard_differs((16, 3, 3, 8))
  _, state = u.assert_sharded_equals_unsharded(norm, x)
  _, var = u.batch_stats(x)
  np.testing.assert_allclose(state["var"][...], 0.9 + 0.1 * var.reshape(-1), rtol=1e-5)


def test_group_statistics_with_a_mask_use_real_positions_only():
  x = u.data((2, 4, 5, 8))
  mask = np.ones((2, 4, 5), bool)
  mask[0, 2:] = False
  padded = np.where(mask[..., None], x, 1e3).astype(np.float32)
  norm = _module("evonorm_s0", 8, num_groups=4)
  y = np.asarray(norm(jnp.asarray(padded), mask=jnp.asarray(mask)))
  gamma, beta, v = *_params(norm), u.f64(norm.v[...])
  for b in range(2):
    real = u.f64(x[b][mask[b]])  # (positions, C)
    std = np.repeat(
      np.sqrt(real.reshape(-1, 4, 2).transpose(1, 0, 2).reshape(4, -1).var(1) + EPS), 2
    )
    expected = real * sigmoid(v * real) / std * gamma + beta
    np.testing.assert_allclose(y[b][mask[b]], expected, rtol=2e-5, atol=2e-5)
