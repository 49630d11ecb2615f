"""ELA, SE and Coordinate Attention against float64 loop references; variant table; counts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from normjax.models import channel_attention as ca
from normjax.models import make_model

EPS = 1e-5


def f64(a):
  return np.asarray(a, np.float64)


def sigmoid(t):
  return 1.0 / (1.0 + np.exp(-t))


def randomize(module, seed=1):
  """Non-trivial norm affine parameters (init is (1, 0)) so the test sees them."""
  rng = np.random.default_rng(seed)
  for path, var in nnx.iter_graph(module):
    if isinstance(var, nnx.Param) and path[-1] in ("scale", "bias"):
      var[...] = jnp.asarray(rng.normal(0.5, 0.3, var[...].shape), var[...].dtype)
  return module


def conv1d_loops(z, kernel, groups):
  """z (B, L, C), kernel (k, C/g, C): zero padding k // 2, PyTorch grouped conv, by loops."""
  b, length, c = z.shape
  k = kernel.shape[0]
  per = c // groups
  pad = np.zeros((b, length + 2 * (k // 2), c))
  pad[:, k // 2 : k // 2 + length] = z
  out = np.zeros((b, length, c))
  for n in range(b):
    for o in range(c):
      g0 = (o // per) * per  # first input channel of output o's group
      for t in range(length):
        s = 0.0
        for j in range(per):
          for d in range(k):
            s += kernel[d, j, o] * pad[n, t + d, g0 + j]
        out[n, t, o] = s
  return out


def group_norm_loops(y, groups, scale, bias):
  """GroupNorm per example over (C/G channels x length), population variance, eps 1e-5."""
  out = np.zeros_like(y)
  per = y.shape[-1] // groups
  for n in range(y.shape[0]):
    for g in range(groups):
      block = y[n, :, g * per : (g + 1) * per]
      out[n, :, g * per : (g + 1) * per] = (block - block.mean()) / np.sqrt(block.var() + EPS)
  return out * scale + bias


def batch_norm_ref(y, scale, bias):
  """Train-mode BN over every axis but the last."""
  axes = tuple(range(y.ndim - 1))
  return (y - y.mean(axes)) / np.sqrt(y.var(axes) + EPS) * scale + bias


def ela_ref(x, module):
  x = f64(x)
  kernel = f64(module.conv.kernel[...])
  groups = module.conv.feature_group_count
  scale, bias = f64(module.norm.scale[...]), f64(module.norm.bias[...])
  # strip means by explicit sums
  b, h, w, c = x.shape
  z_h = np.array([[[sum(x[n, i, j, q] for j in range(w)) / w for q in range(c)] for i in range(h)]
                  for n in range(b)])  # fmt: skip
  z_w = np.array([[[sum(x[n, i, j, q] for i in range(h)) / h for q in range(c)] for j in range(w)]
                  for n in range(b)])  # fmt: skip
  if type(module.norm).__name__ == "GroupNorm":
    norm = lambda y: group_norm_loops(y, module.norm.num_groups, scale, bias)
  else:
    norm = lambda y: batch_norm_ref(y, scale, bias)
  a_h = sigmoid(norm(conv1d_loops(z_h, kernel, groups)))
  a_w = sigmoid(norm(conv1d_loops(z_w, kernel, groups)))
  out = np.zeros_like(x)
  for i in range(h):
    for j in range(w):
      out[:, i, j, :] = x[:, i, j, :] * a_h[:, i, :] * a_w[:, j, :]
  return out


@pytest.mark.parametrize("name", ["ela_t", "ela_b", "ela_s", "ela_l", "ela_bn"])
def test_ela_matches_loop_reference(name):
  c = 32
  with jax.enable_x64(True):
    module = randomize(ca.make_attention(name, c, dtype=jnp.float64, rngs=nnx.Rngs(0)))
    x = np.random.default_rng(0).normal(size=(2, 6, 5, c))  # H != W: catches swapped axes
    y = module(jnp.asarray(x))
    assert y.dtype == jnp.float64
    np.testing.assert_allclose(np.asarray(y), ela_ref(x, module), rtol=1e-6, atol=1e-9)


def test_variant_table_pinned():
  c = 64
  expected = {  # name: (kernel size, conv groups, GroupNorm groups)
    "ela_t": (5, 64, 32),
    "ela_b": (7, 64, 16),
    "ela_s": (5, 8, 16),
    "ela_l": (7, 8, 16),
  }
  for name, (k, g, gn) in expected.items():
    m = ca.make_attention(name, c, rngs=nnx.Rngs(0))
    assert m.conv.kernel[...].shape == (k, c // g, c), name
    assert m.conv.feature_group_count == g and m.conv.padding == ((k // 2, k // 2),)
    assert m.conv.bias is None
    assert (m.norm.num_groups, m.norm.epsilon) == (gn, 1e-5)
    # PyTorch default conv init: U(+-1/sqrt((C/g) k))
    assert float(jnp.max(jnp.abs(m.conv.kernel[...]))) <= (1 / ((c // g) * k)) ** 0.5
  bn = ca.make_attention("ela_bn", c, rngs=nnx.Rngs(0))
  assert bn.conv.kernel[...].shape == (7, 1, c)
  assert (type(bn.norm).__name__, bn.norm.momentum, bn.norm.epsilon) == ("BatchNorm", 0.9, EPS)


def test_one_conv_and_one_norm_shared_by_both_directions():
  m = ca.make_attention("ela_b", 32, rngs=nnx.Rngs(0))
  params = nnx.state(m, nnx.Param)
  names = sorted("/".join(map(str, p)) for p, _ in nnx.to_flat_state(params))
  assert names == ["conv/kernel", "norm/bias", "norm/scale"]


def se_ref(x, m):
  x = f64(x)
  w1, b1 = f64(m.reduce.kernel[...]), f64(m.reduce.bias[...])
  w2, b2 = f64(m.expand.kernel[...]), f64(m.expand.bias[...])
  s = x.mean((1, 2))
  return x * sigmoid(np.maximum(s @ w1 + b1, 0) @ w2 + b2)[:, None, None, :]


def ca_ref(x, m):
  x = f64(x)
  p = lambda layer: (f64(layer.kernel[...]), f64(layer.bias[...]))
  (w1, b1), (wh, bh), (ww, bw) = p(m.reduce), p(m.gate_h), p(m.gate_w)
  h = x.shape[1]
  f = np.concatenate([x.mean(2), x.mean(1)], 1) @ w1 + b1
  f = batch_norm_ref(f, f64(m.norm.scale[...]), f64(m.norm.bias[...]))
  f = f * np.clip(f + 3, 0, 6) / 6
  a_h, a_w = sigmoid(f[:, :h] @ wh + bh), sigmoid(f[:, h:] @ ww + bw)
  return x * a_h[:, :, None, :] * a_w[:, None, :, :]


@pytest.mark.parametrize("name,ref", [("se", se_ref), ("ca", ca_ref)])
def test_baselines_match_reference(name, ref):
  with jax.enable_x64(True):
    m = randomize(ca.make_attention(name, 64, dtype=jnp.float64, rngs=nnx.Rngs(0)))
    x = np.random.default_rng(1).normal(size=(3, 4, 7, 64))
    np.testing.assert_allclose(np.asarray(m(jnp.asarray(x))), ref(x, m), rtol=1e-6, atol=1e-9)
  if name == "se":
    assert m.reduce.kernel[...].shape == (64, 4)  # reduction 16
  else:
    assert m.reduce.kernel[...].shape == (64, 8)  # max(8, C // 32)


def _count(model):
  return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def _abstract(**kwargs):
  return nnx.eval_shape(lambda: make_model("resnet", rngs=nnx.Rngs(0), **kwargs))


def test_resnet_parameter_counts():
  kwargs = dict(num_classes=10, in_channels=1, stage_sizes=(1, 1, 1), width=32)
  base = _count(_abstract(**kwargs))
  widths = (32, 64, 128)  # one block per stage
  per_block = {
    "se": lambda c: c * (c // 16) + c // 16 + (c // 16) * c + c,
    "ca": lambda c: c * 8 + 8 + 2 * 8 + 2 * (8 * c + c),
    "ela_t": lambda c: 5 * c + 2 * c,
    "ela_b": lambda c: 7 * c + 2 * c,
    "ela_s": lambda c: 5 * 8 * c + 2 * c,
    "ela_l": lambda c: 7 * 8 * c + 2 * c,
    "ela_bn": lambda c: 7 * c + 2 * c,
  }
  for name, fn in per_block.items():
    assert _count(_abstract(attention=name, **kwargs)) - base == sum(fn(c) for c in widths), name
  assert base == 308074


def test_attention_at_end_of_residual_branch():
  """Placement: gate(y) + shortcut(x), so a zero gate leaves relu(shortcut(x))."""
  kwargs = dict(num_classes=10, in_channels=4, stage_sizes=(1,), width=4, attention="se")
  model = make_model("resnet", rngs=nnx.Rngs(0), **kwargs)
  block = model.stages[0][0]
  block.attention.expand.bias[...] = jnp.full((4,), -1e4)  # gate -> 0
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 5, 5, 4)), jnp.float32)
  np.testing.assert_allclose(block(x), jax.nn.relu(x), atol=1e-6)


def test_bad_choices_fail_with_one_line():
  kwargs = dict(num_classes=10, in_channels=1, stage_sizes=(1,))
  with pytest.raises(ValueError, match="attention='ela_x'"):
    _abstract(width=32, attention="ela_x", **kwargs)
  with pytest.raises(ValueError, match="GroupNorm groups 32 must divide the 24 channels"):
    _abstract(width=24, attention="ela_t", **kwargs)
  with pytest.raises(ValueError, match="conv groups 0 must divide the 4 channels"):
    _abstract(width=4, attention="ela_s", **kwargs)


def test_config_builds_every_attention():
  from normjax import run
  from normjax.config_args import sibling_config

  for name in ca.ATTENTIONS:
    config = sibling_config("configs/resnet_ela.py", "resnet_ela", f"attention={name}")
    assert config.model.attention == name
  small = sibling_config("configs/resnet_ela.py", "resnet_ela", "batch=8,train_size=200")
  assert small.data.train_split == "train[:200]" and small.batch_size == 8
  config = sibling_config("configs/resnet_ela.py", "resnet_ela", "attention=ela_t")
  config.model.width = 24
  with pytest.raises(ValueError, match="config key model.attention"):
    run.build(config)
