"""IBN layer against a float64 reference; IBN-a / IBN-b ResNet structure."""

import functools

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from normjax.models import make_model, resnet
from normjax.norms import basic, ibn, make_norm
from tests import conv_norm_utils as u

EPS = 1e-5
AFFINE = ["instance_scale", "instance_bias", "batch_scale", "batch_bias"]


def ref_ibn(x, norm, mean=None, var=None):
  x = u.f64(x)
  half = norm.half
  a, b = x[..., :half], x[..., half:]
  a = (a - a.mean((1, 2), keepdims=True)) / np.sqrt(a.var((1, 2), keepdims=True) + EPS)
  if mean is None:
    mean, var = u.batch_stats(b)
  b = (b - mean) / np.sqrt(var + EPS)
  p = {n: u.f64(getattr(norm, n)[...]) for n in AFFINE}
  return np.concatenate(
    [a * p["instance_scale"] + p["instance_bias"], b * p["batch_scale"] + p["batch_bias"]], -1
  )


def test_split_is_int_of_ratio():
  assert ibn.ibn_split(64) == 32 and ibn.ibn_split(5) == 2 and ibn.ibn_split(10, 0.3) == 3
  with pytest.raises(ValueError, match="ratio=0.01 on num_features=8"):
    ibn.ibn_split(8, 0.01)


def test_ibn_train_update_and_eval():
  x = u.data((4, 5, 5, 6))
  norm = u.randomize(make_norm("ibn", 6, rngs=nnx.Rngs(0)), AFFINE)
  assert (norm.half, norm.momentum, norm.epsilon, norm.instance_epsilon) == (3, 0.9, EPS, EPS)
  np.testing.assert_allclose(norm(jnp.asarray(x)), ref_ibn(x, norm), rtol=2e-5, atol=2e-5)
  mean, var = u.batch_stats(x[..., 3:])
  np.testing.assert_allclose(norm.mean[...], 0.1 * mean.reshape(-1), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(norm.var[...], 0.9 + 0.1 * var.reshape(-1), rtol=1e-5)
  running = u.f64(norm.mean[...]), u.f64(norm.var[...])
  norm.eval()
  y = norm(jnp.asarray(x))
  # eval: running statistics for the BN half, instance statistics still for the IN half
  np.testing.assert_allclose(y, ref_ibn(x, norm, *running), rtol=2e-5, atol=2e-5)
  np.testing.assert_allclose(norm(jnp.asarray(x[1:2])), y[1:2], rtol=1e-5, atol=1e-5)


def test_ibn_sharded_equals_unsharded():
  norm = u.randomize(make_norm("ibn", 8, rngs=nnx.Rngs(0)), AFFINE)
  u.assert_sharded_equals_unsharded(norm, u.per_shard_differs((16, 3, 3, 8)))


def _norm_kinds(model):
  kinds = {}
  for path, module in nnx.iter_graph(model):
    if isinstance(module, (ibn.IBN, basic.InstanceNorm, basic.BatchNorm)):
      kinds["/".join(map(str, path))] = type(module).__name__
  return kinds


def test_ibn_a_and_b_resnets_place_their_layers_as_the_official_code():
  common = dict(
    num_classes=10,
    in_channels=1,
    stage_sizes=(2, 2, 2),
    width=8,
    norm="batchnorm",
    norm_kwargs={"momentum": 0.8},
  )
  build = lambda **kw: nnx.eval_shape(
    lambda: make_model("resnet", **{**common, **kw}, rngs=nnx.Rngs(0))
  )
  a = _norm_kinds(build(ibn="a"))
  ibn_paths = sorted(p for p, k in a.items() if k == "IBN")
  assert ibn_paths == [f"stages/{s}/{b}/norm_act1/norm" for s in (0, 1) for b in (0, 1)]
  assert not any(k == "InstanceNorm" for k in a.values())
  assert a["stages/2/0/norm_act1/norm"] == "BatchNorm"
  assert build(ibn="a").stages[0][0].norm_act1.norm.momentum == 0.8  # the BN's own settings

  b = _norm_kinds(build(ibn="b"))
  instance_paths = sorted(p for p, k in b.items() if k == "InstanceNorm")
  assert instance_paths == [
    "stages/0/1/post_add_norm/norm",
    "stages/1/1/post_add_norm/norm",
    "stem_norm_act/norm",
  ]
  assert not any(k == "IBN" for k in b.values())
  plain = _norm_kinds(build())
  assert set(plain.values()) == {"BatchNorm"}
  with pytest.raises(ValueError, match="ibn='c'"):
    build(ibn="c")
  with pytest.raises(ValueError, match="use norm='batchnorm'"):
    build(ibn="a", norm="layernorm")


def test_ibn_b_instance_norm_after_the_residual_add():
  rngs = nnx.Rngs(0)
  block = resnet.BasicBlock(
    8,
    8,
    strides=1,
    conv=functools.partial(resnet.conv_layer, dtype=jnp.float32, rngs=rngs),
    norm_act=functools.partial(resnet.NormAct, norm="batchnorm", norm_kwargs={}, rngs=rngs),
    zero_init_residual=True,
    post_add_norm=functools.partial(
      resnet.NormAct, norm="instancenorm", norm_kwargs={"epsilon": EPS}, apply_act=False, rngs=rngs
    ),
  )
  x = jnp.asarray(u.data((2, 4, 4, 8)))
  # zero-init residual: the branch is 0, so the block is relu(IN(x)) exactly
  z = u.f64(x)
  z = (z - z.mean((1, 2), keepdims=True)) / np.sqrt(z.var((1, 2), keepdims=True) + EPS)
  np.testing.assert_allclose(block(x), np.maximum(z, 0), rtol=2e-5, atol=2e-5)


def test_ibn_against_torch_official_layer():
  """IBN-Net's IBN re-typed from its formula: InstanceNorm2d(half, affine) on the first
  channels, BatchNorm2d (momentum 0.1 = 0.9 here) on the rest; float64, train then eval."""
  torch = pytest.importorskip("torch")
  import jax

  x = u.data((4, 5, 5, 6)).astype(np.float64)
  p = {n: u.RNG.standard_normal(3) for n in AFFINE}
  running = {"mean": u.RNG.standard_normal(3), "var": 0.5 + u.RNG.random(3)}
  inorm = torch.nn.InstanceNorm2d(3, affine=True).double()
  bnorm = torch.nn.BatchNorm2d(3, momentum=0.1).double()
  with torch.no_grad():
    for module, prefix in ((inorm, "instance"), (bnorm, "batch")):
      module.weight.copy_(torch.tensor(p[f"{prefix}_scale"]))
      module.bias.copy_(torch.tensor(p[f"{prefix}_bias"]))
    bnorm.running_mean.copy_(torch.tensor(running["mean"]))
    bnorm.running_var.copy_(torch.tensor(running["var"]))
  params = {
    "instance": {"scale": p["instance_scale"], "bias": p["instance_bias"]},
    "batch": {"scale": p["batch_scale"], "bias": p["batch_bias"]},
  }
  xt = torch.tensor(x).permute(0, 3, 1, 2)
  with jax.enable_x64(True):
    params, state = jax.tree.map(jnp.asarray, params), jax.tree.map(jnp.asarray, running)
    for train in (True, False):
      bnorm.train(train)
      first, rest = torch.split(xt, 3, dim=1)
      expected = torch.cat([inorm(first), bnorm(rest)], 1).permute(0, 2, 3, 1).detach()
      y, new = ibn.ibn(jnp.asarray(x), params, state, train=train, momentum=0.9)
      np.testing.assert_allclose(y, expected.numpy(), rtol=1e-12, atol=1e-12)
      if train:  # running mean as torch's (torch's running var is the unbiased one)
        np.testing.assert_allclose(new["mean"], bnorm.running_mean.numpy(), rtol=1e-12)
        bnorm.running_var.copy_(torch.tensor(np.asarray(new["var"])))
        state = new
