"""Batch-Channel Norm (+ EstBN), Weight Standardization and Scaled WS against float64 references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from normjax.models import make_model
from normjax.models.ws_conv import (
  ScaledWSConv,
  WSConv,
  scaled_standardize_weight,
  standardize_weight,
)
from normjax.norms import batch_channel, make_norm
from tests import conv_norm_utils as u

EPS = 1e-5


def ref_group_standardize(z, groups, eps=EPS):
  b, h, w, c = z.shape
  g = z.reshape(b, h, w, groups, c // groups)
  mean, var = g.mean(axis=(1, 2, 4), keepdims=True), g.var(axis=(1, 2, 4), keepdims=True)
  return ((g - mean) / np.sqrt(var + eps)).reshape(z.shape)


def ref_bcn(x, norm, mean, var):
  """BN with (mean, var) and its per-channel affine, then group standardization and the
  per-group affine."""
  g = norm.num_groups
  z = (u.f64(x) - mean) / np.sqrt(var + EPS) * u.f64(norm.batch_scale[...]) + u.f64(
    norm.batch_bias[...]
  )
  per_group = lambda v: np.repeat(u.f64(v[...]), x.shape[-1] // g)
  return ref_group_standardize(z, g) * per_group(norm.scale) + per_group(norm.bias)


def _bcn(channels=8, **kwargs):
  norm = make_norm("batch_channel_norm", channels, rngs=nnx.Rngs(0), **kwargs)
  return u.randomize(norm, ["batch_scale", "batch_bias", "scale", "bias"])


def test_bcn_train_update_and_eval():
  x = u.data((4, 5, 5, 8))
  norm = _bcn(num_groups=4)
  mean, var = u.batch_stats(x)
  np.testing.assert_allclose(
    norm(jnp.asarray(x)), ref_bcn(x, norm, mean, var), rtol=2e-5, atol=2e-5
  )
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
  norm.mean[...], norm.var[...] = (
    jnp.asarray(old_mean, jnp.float32),
    jnp.asarray(old_var, jnp.float32),
  )
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
  grad = jax.grad(
    lambda v: batch_channel.estimated_batch_norm(v, params, state, train=True, momentum=0.8)[
      0
    ].sum()
  )(jnp.asarray(x))
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
  np.testing.assert_allclose(fan_in * w_hat.var((0, 1, 2)), gain**2, rtol=1e-5)  # unit "N var"
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
  conv = WSConv(3, 4, 3, strides=stride, kernel_dilation=dilation, use_bias=True, rngs=nnx.Rngs(0))
  conv.bias[...] = jnp.asarray(u.RNG.standard_normal(4), jnp.float32)
  w = u.f64(conv.kernel[...])
  w_hat = (w - w.mean((0, 1, 2))) / np.sqrt(w.var((0, 1, 2), ddof=1) + EPS)
  expected = u.conv2d_ref(
    x, w_hat, stride=stride, padding=(dilation, dilation), dilation=dilation
  ) + u.f64(conv.bias[...])
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
  model = nnx.eval_shape(
    lambda: make_model(
      "resnet",
      num_classes=10,
      in_channels=1,
      stage_sizes=(1, 1),
      width=8,
      conv="ws",
      norm="batch_channel_norm",
      norm_kwargs={"num_groups": 4},
      rngs=nnx.Rngs(0),
    )
  )
  convs = [m for _, m in nnx.iter_graph(model) if isinstance(m, WSConv)]
  assert len(convs) == 6  # stem, 2 + 2 block convs, 1 projection
  norms = [m for _, m in nnx.iter_graph(model) if isinstance(m, batch_channel.BatchChannelNorm)]
  assert len(norms) == 6 and all(n.num_groups == 4 for n in norms)


# ----------------------------------------------------------------------------- fidelity
def np_official_bcn(x, p, state, *, train, groups, eps, batch_eps, momentum=0.9):
  """The official BCNorm step in float64 (channels-last): BatchNorm2d (batch_eps, its own
  affine) then per-(sample, group) standardization with ``eps`` and the per-group affine."""
  x = u.f64(x)
  if train:
    mean, var = x.mean((0, 1, 2)), x.var((0, 1, 2))
    new_mean = momentum * state["mean"] + (1 - momentum) * mean
    new_var = momentum * state["var"] + (1 - momentum) * var  # population (normjax's choice)
  else:
    mean, var = state["mean"], state["var"]
    new_mean, new_var = mean, var
  z = (x - mean) / np.sqrt(var + batch_eps) * p["batch"]["scale"] + p["batch"]["bias"]
  n, h, w, c = z.shape
  g = z.reshape(n, h, w, groups, c // groups)
  gm, gv = g.mean((1, 2, 4), keepdims=True), g.var((1, 2, 4), keepdims=True)
  y = ((g - gm) / np.sqrt(gv + eps)).reshape(z.shape)
  return y * np.repeat(p["scale"], c // groups) + np.repeat(p["bias"], c // groups), (
    new_mean,
    new_var,
  )


def _bcn_inputs(channels=8, groups=4, seed=7):
  rng = np.random.default_rng(seed)
  # small per-(sample, group) spread and small channel variances: both epsilons matter
  x = 0.05 * rng.standard_normal((3, 4, 4, channels)) + rng.standard_normal(channels)
  params = {
    "batch": {"scale": rng.uniform(0.5, 1.5, channels), "bias": rng.normal(size=channels)},
    "scale": rng.uniform(0.5, 1.5, groups),
    "bias": rng.normal(size=groups),
  }
  state = {"mean": rng.normal(size=channels), "var": rng.uniform(0.001, 0.01, channels)}
  return x, params, state


@pytest.mark.parametrize("train", [True, False])
def test_bcn_epsilons_are_per_part_as_the_official_code(train):
  x, params, state = _bcn_inputs()
  eps, batch_eps = 3e-3, 1e-5
  with jax.enable_x64(True):
    y, new = batch_channel.batch_channel_norm(
      jnp.asarray(x),
      jax.tree.map(jnp.asarray, params),
      jax.tree.map(jnp.asarray, state),
      train=train,
      num_groups=4,
      epsilon=eps,
      batch_epsilon=batch_eps,
    )
    expected, (mean, var) = np_official_bcn(
      x, params, state, train=train, groups=4, eps=eps, batch_eps=batch_eps
    )
    np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(new["mean"], mean, rtol=1e-13)
    np.testing.assert_allclose(new["var"], var, rtol=1e-13)
    # the old single epsilon (both parts eps) is a different function here
    swapped, _ = np_official_bcn(x, params, state, train=train, groups=4, eps=eps, batch_eps=eps)
    assert np.abs(swapped - expected).max() > 1e-3
  norm = make_norm("batch_channel_norm", 8, num_groups=4, epsilon=eps, rngs=nnx.Rngs(0))
  assert (norm.epsilon, norm.batch_epsilon) == (eps, 1e-5)  # official BCNorm(eps) default


def test_bcn_against_torch_official_formula():
  torch = pytest.importorskip("torch")
  x, params, state = _bcn_inputs(seed=8)
  eps, batch_eps, groups = 2e-3, 1e-5, 4
  # the official BCNorm re-typed from its formula: BatchNorm2d(C) (eps 1e-5, momentum 0.1),
  # then the (sample, group) rows standardized with eps (GroupNorm without affine), then the
  # per-group affine
  w, b = (torch.tensor(params[k]).view(1, groups, 1) for k in ("scale", "bias"))

  def torch_bcn(inp, train):
    bn = torch.nn.BatchNorm2d(8, eps=batch_eps, momentum=0.1).double().train(train)
    with torch.no_grad():
      bn.weight.copy_(torch.tensor(params["batch"]["scale"]))
      bn.bias.copy_(torch.tensor(params["batch"]["bias"]))
      bn.running_mean.copy_(torch.tensor(state["mean"]))
      bn.running_var.copy_(torch.tensor(state["var"]))
    out = bn(inp)
    rows = torch.nn.functional.group_norm(out, groups, eps=eps).reshape(inp.shape[0], groups, -1)
    return (w * rows + b).reshape(inp.shape), bn

  xt = torch.tensor(x).permute(0, 3, 1, 2)
  with jax.enable_x64(True):
    for train in (True, False):
      expected, bn = torch_bcn(xt, train)
      expected = expected.permute(0, 2, 3, 1).detach().numpy()
      y, new = batch_channel.batch_channel_norm(
        jnp.asarray(x),
        jax.tree.map(jnp.asarray, params),
        jax.tree.map(jnp.asarray, state),
        train=train,
        num_groups=groups,
        epsilon=eps,
        batch_epsilon=batch_eps,
      )
      np.testing.assert_allclose(y, expected, rtol=1e-11, atol=1e-11)
      if train:  # torch's running var is the unbiased one; the running means agree
        np.testing.assert_allclose(new["mean"], bn.running_mean.numpy(), rtol=1e-12)


def np_grouped_ws_conv(x, kernel, groups, *, stride=1, padding=(1, 1), eps=EPS):
  """Official WS conv with ``groups``: each output channel standardized over its own
  (in/groups, kh, kw) fan-in (unbiased variance, eps inside the root), then a grouped conv."""
  w = u.f64(kernel)
  w_hat = (w - w.mean((0, 1, 2))) / np.sqrt(w.var((0, 1, 2), ddof=1) + eps)
  cin, cout = w.shape[2], w.shape[3] // groups
  return np.concatenate(
    [
      u.conv2d_ref(
        u.f64(x)[..., g * cin : (g + 1) * cin],
        w_hat[..., g * cout : (g + 1) * cout],
        stride=stride,
        padding=padding,
      )
      for g in range(groups)
    ],
    axis=-1,
  )


@pytest.mark.parametrize("groups,stride", [(2, 1), (3, 2), (6, 1)])
def test_grouped_ws_conv_matches_the_official_grouped_conv(groups, stride):
  with jax.enable_x64(True):
    conv = WSConv(
      6,
      12 if groups != 6 else 6,
      3,
      strides=stride,
      feature_group_count=groups,
      rngs=nnx.Rngs(0),
      dtype=jnp.float64,
    )
    assert conv.kernel[...].shape == (3, 3, 6 // groups, conv.kernel[...].shape[-1])
    conv.kernel = nnx.Param(jnp.asarray(u.RNG.standard_normal(conv.kernel[...].shape) + 0.3))
    x = u.data((2, 7, 7, 6)).astype(np.float64)
    expected = np_grouped_ws_conv(x, conv.kernel[...], groups, stride=stride)
    np.testing.assert_allclose(conv(jnp.asarray(x)), expected, rtol=1e-12, atol=1e-12)
    # scaled WS: N = kh * kw * in / groups
    scaled = ScaledWSConv(6, 6, 3, feature_group_count=groups, rngs=nnx.Rngs(1))
    w_hat = u.f64(scaled.standardized_kernel())
    np.testing.assert_allclose((w_hat**2).sum((0, 1, 2)), 1.0, rtol=1e-5)
  with pytest.raises(ValueError, match="feature_group_count=4"):
    WSConv(6, 12, 3, feature_group_count=4, rngs=nnx.Rngs(0))


def test_grouped_ws_conv_against_torch_conv2d():
  torch = pytest.importorskip("torch")
  groups = 3
  with jax.enable_x64(True):
    conv = WSConv(
      6,
      9,
      3,
      strides=2,
      feature_group_count=groups,
      use_bias=True,
      rngs=nnx.Rngs(3),
      dtype=jnp.float64,
    )
    conv.kernel = nnx.Param(jnp.asarray(u.RNG.standard_normal(conv.kernel[...].shape) - 0.2))
    conv.bias = nnx.Param(jnp.asarray(u.RNG.standard_normal(9)))
    x = u.data((2, 8, 8, 6)).astype(np.float64)
    y = np.asarray(conv(jnp.asarray(x)))
  # the official WS Conv2d re-typed from its formula, in torch's (out, in/groups, kh, kw)
  weight = torch.tensor(np.asarray(conv.kernel[...])).permute(3, 2, 0, 1)
  centred = weight - weight.mean(dim=(1, 2, 3), keepdim=True)
  std = (centred.flatten(1).var(dim=1, unbiased=True) + 1e-5).sqrt()
  expected = torch.nn.functional.conv2d(
    torch.tensor(x).permute(0, 3, 1, 2),
    centred / std[:, None, None, None],
    torch.tensor(np.asarray(conv.bias[...])),
    stride=2,
    padding=1,
    groups=groups,
  )
  np.testing.assert_allclose(y, expected.permute(0, 2, 3, 1).numpy(), rtol=1e-11, atol=1e-11)
