"""Batch-Channel Norm (+ EstBN), Weight Standardization and Scaled WS against float64 references."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from normjax.models import make_model
from normjax.models.ws_conv import (ScaledWSConv, WSConv, scaled_standardize_weight,
                                    standardize_weight)
from normjax.norms import batch_channel, make_norm
from tests import conv_norm_utils as u

EPS = 1e-5


def ref_group_standardize(z, groups, eps=EPS):
  b, h, w, c = z.shape
  g = z.reshape(b, h, w, groups, c // groups)
  mean, var = g.mean(axis=(1, 2, 4), keepdims=True), g.var(axis=(1, 2, 4), keepdims=True)
  return ((g - mean) / np.sqrt(var + eps)).reshape(z.shape)


def ref_bcn(x, norm, mean, var):
  """BN with (mean, var) and its per-channel affine, then group standardization + per-group affine."""
  g = norm.num_groups
  z = (u.f64(x) - mean) / np.sqrt(var + EPS) * u.f64(norm.batch_scale[...]) + u.f64(
      norm.batch_bias[...])
  per_group = lambda v: np.repeat(u.f64(v[...]), x.shape[-1] // g)
  return ref_group_standardize(z, g) * per_group(norm.scale) + per_group(norm.bias)


def _bcn(channels=8, **kwargs):
  norm = make_norm("batch_channel_norm", channels, rngs=nnx.Rngs(0), **kwargs)
  return u.randomize(norm, ["batch_scale", "batch_bias", "scale", "bias"])


def test_bcn_train_update_and_eval():
  x = u.data((4, 5, 5, 8))
  norm = _bcn(num_groups=4)
  mean, var = u.batch_stats(x)
  np.testing.assert_allclose(norm(jnp.asarray(x)), ref_bcn(x, norm, mean, var), rtol=2e-5,
                             atol=2e-5)
  np.testing.assert_allclose(norm.mean[...], 0.1 * mean.reshape(-1), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(norm.var[...], 0.9 + 0.1 * var.reshape(-1), rtol=1e-5)
  running = u.f64(norm.mean[...]), u.f64(norm.var[...])
  norm.eval()
  y = norm(jnp.asarray(x))
  np.testing.assert_allclose(y, ref_bcn(x, norm, *running), rtol=2e-5, atol=2e-5)
  np.testing.assert_allclose(norm(jnp.asarray(x[2:3])), y[2:3], rtol=1e-5, atol=1e-5)


def test_estimated_bn_uses_updated_running_statistics_without_gradient():
  x = u.data((2, 4, 4, 8))
  norm = _bcn(num_groups=2, estimated=True, momentum=0.8)
  old_mean, old_var = u.RNG.standard_normal(8), 0.5 + u.RNG.random(8)
  norm.mean[...], norm.var[...] = jnp.asarray(old_mean, jnp.float32), jnp.asarray(old_var,
                                                                                  jnp.float32)
  xf = u.f64(x).reshape(-1, 8)
  new_mean = 0.8 * old_mean + 0.2 * xf.mean(0)
  new_var = 0.8 * old_var + 0.2 * ((xf - old_mean) ** 2).mean(0)  # deviation from OLD mean
  y = norm(jnp.asarray(x))
  np.testing.assert_allclose(norm.mean[...], new_mean, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(norm.var[...], new_var, rtol=1e-5)
  np.testing.assert_allclose(y, ref_bcn(x, norm, new_mean, new_var), rtol=2e-5, atol=2e-5)
  # batch part: an affine map of x with the statistics held constant
  params = {"scale": norm.batch_scale[...], "bias": norm.batch_bias[...]}
  state = {"mean": jnp.asarray(old_mean, jnp.float32), "var": jnp.asarray(old_var, jnp.float32)}
  grad = jax.grad(lambda v: batch_channel.estimated_batch_norm(
      v, params, state, train=True, momentum=0.8)[0].sum())(jnp.asarray(x))
  expected = u.f64(params["scale"]) / np.sqrt(new_var + EPS)
  np.testing.assert_allclose(grad, np.broadcast_to(expected, x.shape), rtol=1e-5)


def test_bcn_checks_groups():
  with pytest.raises(ValueError, match="num_groups=3 must divide num_features=8"):
    make_norm("batch_channel_norm", 8, num_groups=3, rngs=nnx.Rngs(0))
  assert make_norm("batch_channel_norm", 64, rngs=nnx.Rngs(0)).num_groups == 32


@pytest.mark.parametrize("estimated", [False, True])
def test_bcn_sharded_equals_unsharded(estimated):
  norm = _bcn(num_groups=4, estimated=estimated)
  u.assert_sharded_equals_unsharded(norm, u.per_shard_differs((16, 3, 3, 8)))


# ----------------------------------------------------------------------------- WS convs
def test_ws_kernel_zero_mean_unit_variance_per_output_channel():
  conv = WSConv(6, 5, 3, rngs=nnx.Rngs(0))
  w = u.f64(conv.kernel[...])
  w_hat = u.f64(standardize_weight(conv.kernel[...]))
  assert w_hat.shape == (3, 3, 6, 5)  # output channel = LAST axis
  fan_axes = (0, 1, 2)
  np.testing.assert_allclose(w_hat.mean(fan_axes), 0.0, atol=1e-6)
  var = w.var(fan_axes, ddof=1)
  np.testing.assert_allclose(w_hat.var(fan_axes, ddof=1), var / (var + EPS), rtol=1e-5)
  np.testing.assert_allclose(w_hat.var(fan_axes, ddof=1), 1.0, rtol=3e-3)
  # per output channel, not per input channel or over the whole kernel
  assert np.abs(w_hat.mean((0, 1, 3))).max() > 1e-3


def test_scaled_ws_kernel_and_gain():
  conv = u.randomize(ScaledWSConv(6, 5, 3, rngs=nnx.Rngs(1)), ["gain"], positive=("gain",))
  w = u.f64(conv.kernel[...])
  gain = u.f64(conv.gain[...])
  w_hat = u.f64(conv.standardized_kernel())
  fan_in = 3 * 3 * 6
  expected = gain * (w - w.mean((0, 1, 2))) / np.sqrt(np.maximum(fan_in * w.var((0, 1, 2)), 1e-4))
  np.testing.assert_allclose(w_hat, expected, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(w_hat.mean((0, 1, 2)), 0.0, atol=1e-7)
  np.testing.assert_allclose(fan_in * w_hat.var((0, 1, 2)), gain ** 2, rtol=1e-5)  # unit "N var"
  # the floor: an all-equal kernel gives 0, not NaN
  flat = scaled_standardize_weight(jnp.ones((3, 3, 2, 4)))
  np.testing.assert_array_equal(flat, 0.0)
  # variance preservation for zero-mean, unit-variance independent inputs
  x = u.RNG.standard_normal((16, 10, 10, 6))
  y = u.conv2d_ref(x, u.f64(ScaledWSConv(6, 16, 3, rngs=nnx.Rngs(2)).standardized_kernel()))
  assert 0.85 < y.var() < 1.15


@pytest.mark.parametrize("stride,dilation", [(1, 1), (2, 1), (1, 2)])
def test_ws_conv_forward_matches_numpy_convolution(stride, dilation):
  x = u.data((2, 7, 7, 3))
  conv = WSConv(3, 4, 3, strides=stride, kernel_dilation=dilation, use_bias=True,
                rngs=nnx.Rngs(0))
  conv.bias[...] = jnp.asarray(u.RNG.standard_normal(4), jnp.float32)
  w = u.f64(conv.kernel[...])
  w_hat = (w - w.mean((0, 1, 2))) / np.sqrt(w.var((0, 1, 2), ddof=1) + EPS)
  expected = u.conv2d_ref(x, w_hat, stride=stride, padding=(dilation, dilation),
                          dilation=dilation) + u.f64(conv.bias[...])
  np.testing.assert_allclose(conv(jnp.asarray(x)), expected, rtol=1e-4, atol=1e-4)
  scaled = ScaledWSConv(3, 4, 3, strides=stride, rngs=nnx.Rngs(0))
  expected = u.conv2d_ref(x, u.f64(scaled.standardized_kernel()), stride=stride, padding=(1, 1))
  np.testing.assert_allclose(scaled(jnp.asarray(x)), expected, rtol=1e-4, atol=1e-4)


def test_ws_output_is_invariant_to_kernel_scale_and_shift():
  """The gradient flows through the standardization: it is orthogonal to the kernel."""
  x = jnp.asarray(u.data((2, 6, 6, 3)))
  conv = WSConv(3, 4, 3, rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(conv)
  y = conv(x)
  conv.kernel[...] = conv.kernel[...] * 3.0 + 0.5
  np.testing.assert_allclose(conv(x), y, rtol=1e-4, atol=1e-4)
  grad = jax.grad(lambda p: jnp.sum(nnx.merge(graphdef, p)(x) ** 3))(params)["kernel"][...]
  kernel = params["kernel"][...]
  cosine = jnp.sum(grad * kernel) / (jnp.linalg.norm(grad) * jnp.linalg.norm(kernel))
  assert abs(float(cosine)) < 1e-3 and float(jnp.linalg.norm(grad)) > 0


def test_resnet_with_ws_convs_and_bcn():
  model = nnx.eval_shape(lambda: make_model(
      "resnet", num_classes=10, in_channels=1, stage_sizes=(1, 1), width=8, conv="ws",
      norm="batch_channel_norm", norm_kwargs={"num_groups": 4}, rngs=nnx.Rngs(0)))
  convs = [m for _, m in nnx.iter_graph(model) if isinstance(m, WSConv)]
  assert len(convs) == 6  # stem, 2 + 2 block convs, 1 projection
  norms = [m for _, m in nnx.iter_graph(model) if isinstance(m, batch_channel.BatchChannelNorm)]
  assert len(norms) == 6 and all(n.num_groups == 4 for n in norms)
