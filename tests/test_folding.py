"""Folding eval-affine norms (UnifiedNorm, PowerNorm, BatchNorm) into adjacent linear layers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from normjax.models import make_model
from normjax.norms.basic import Identity
from normjax.norms.powernorm import GroupScaling
from normjax.surgery.conversions import build
from normjax.surgery.folding import (
  ChannelAffine,
  EvalMap,
  fold_into_next,
  fold_into_previous,
  fold_norms,
)

GPT2 = dict(vocab_size=29, max_len=8, width=16, depth=2, num_heads=4)
VIT = dict(
  num_classes=5,
  image_size=4,
  in_channels=2,
  patch_size=2,
  width=16,
  depth=2,
  num_heads=4,
  mlp_dim=32,
)


def random_model(name, kwargs, seed=0):
  """A model with random parameters and random (positive) running statistics, in eval mode."""
  abstract = nnx.eval_shape(lambda: make_model(name, rngs=nnx.Rngs(0), **kwargs))
  rng = np.random.default_rng(seed)
  params = jax.tree.map(
    lambda x: 0.3 * rng.standard_normal(x.shape) + 0.2,
    nnx.to_pure_dict(nnx.state(abstract, nnx.Param)),
  )
  model = build(name, kwargs, params)
  for _, node in nnx.iter_graph(model):
    if isinstance(node, nnx.BatchStat) and jnp.issubdtype(node[...].dtype, jnp.floating):
      node[...] = jnp.asarray(rng.uniform(0.3, 3.0, node[...].shape), jnp.float32)
  model.eval()
  return model


def forward(model, inputs):
  graph, state = nnx.split(model)
  return np.asarray(jax.jit(lambda s, x: nnx.merge(graph, s)(x))(state, inputs))


def inputs(name):
  rng = np.random.default_rng(1)
  if name == "gpt2":
    return jnp.asarray(rng.integers(0, GPT2["vocab_size"], (3, GPT2["max_len"])))
  return jnp.asarray(rng.standard_normal((3, 4, 4, 2)), jnp.float32)


def test_fold_formulas_match_applying_the_map():
  rng = np.random.default_rng(2)
  x, kernel, bias = rng.normal(size=(5, 6)), rng.normal(size=(6, 4)), rng.normal(size=4)
  a, c = rng.uniform(0.5, 2, 6), rng.normal(size=6)
  for centered in (False, True):
    m = EvalMap(jnp.asarray(a), jnp.asarray(c), centered)
    mapped = ((x - x.mean(-1, keepdims=True)) if centered else x) * a + c
    w, b = fold_into_next(m, jnp.asarray(kernel), jnp.asarray(bias))
    np.testing.assert_allclose(x @ np.asarray(w) + b, mapped @ kernel + bias, rtol=1e-5)
    h, k2 = rng.normal(size=(5, 4)), rng.normal(size=(4, 6))
    u = h @ k2 + c[::-1]
    expected = ((u - u.mean(-1, keepdims=True)) if centered else u) * a + c
    w, b = fold_into_previous(m, jnp.asarray(k2), jnp.asarray(c[::-1]))
    np.testing.assert_allclose(h @ np.asarray(w) + b, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
  "name,norm,norm_kwargs,placement",
  [
    ("gpt2", "unifiednorm", {}, "pre"),
    ("gpt2", "powernorm", {"groups": 4}, "pre"),
    ("vit", "batchnorm", {}, "peri"),
    ("vit", "unifiednorm", {"window": 2}, "peri"),
  ],
)
def test_folded_model_gives_identical_outputs(name, norm, norm_kwargs, placement):
  kwargs = dict(
    GPT2 if name == "gpt2" else VIT, norm=norm, norm_kwargs=norm_kwargs, placement=placement
  )
  model = random_model(name, kwargs)
  x = inputs(name)
  expected = forward(model, x)
  assert np.abs(expected).max() > 0.1
  variants = [False, True] if name == "gpt2" else [False]
  for untie_head in variants:
    folded = fold_norms(model, untie_head=untie_head)
    np.testing.assert_allclose(forward(folded, x), expected, rtol=2e-5, atol=2e-5)
    left = {
      "/".join(map(str, p)): type(n)
      for p, n in nnx.iter_graph(folded)
      if p and "norm" in str(p[-1]) and isinstance(n, nnx.Module)
    }
    kept = GroupScaling if norm == "powernorm" else Identity
    # a tied GPT-2 head stays tied: its final norm becomes an elementwise affine map
    final = ChannelAffine if name == "gpt2" and not untie_head else kept
    assert left.pop("transformer/final_norm") is final
    assert left and set(left.values()) == {kept} | ({Identity} if placement == "peri" else set())
  np.testing.assert_array_equal(forward(model, x), expected)  # the original is untouched


@pytest.mark.parametrize(
  "kwargs,match",
  [
    (dict(norm="layernorm"), "LayerNorm normalizes each token"),
    (dict(norm="batchnorm", placement="post"), "post placement"),
    (dict(norm="powernorm", placement="peri"), "GroupScaling sits between"),
    (dict(norm="batchnorm", embedding_norm=True), "embedding_norm"),
  ],
)
def test_unfoldable_norms_are_refused(kwargs, match):
  model = nnx.eval_shape(lambda: make_model("gpt2", rngs=nnx.Rngs(0), **GPT2, **kwargs))
  with pytest.raises(ValueError, match=match):
    fold_norms(model)
