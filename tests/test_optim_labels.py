"""Parameter labels on dict trees and on nnx.State; scale-invariance probe."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from normjax.optim import conda, labels
from normjax.optim.labels import MatrixAxes


def dict_params():
  return {
    "wte": {"embedding": jnp.ones((11, 4))},
    "block": {
      "attn": {
        "qkv": {"kernel": jnp.ones((4, 12)), "bias": jnp.ones((12,))},
        "proj": {"kernel": jnp.ones((4, 4))},
      },
      "mlp": {"fc": {"kernel": jnp.ones((4, 16))}, "fc_out": {"kernel": jnp.ones((16, 4))}},
      "norm1": {"scale": jnp.ones((4,)), "bias": jnp.ones((4,))},
    },
    "head": {"kernel": jnp.ones((4, 11))},
  }


def flat(tree):
  return {
    "/".join(labels.path_names(p)): v
    for p, v in jax.tree_util.tree_leaves_with_path(
      tree, is_leaf=lambda x: x is None or isinstance(x, MatrixAxes)
    )
  }


def test_partitions_on_a_dict_tree():
  params = dict_params()
  assert flat(labels.matrices(params)) == {k: np.ndim(v) >= 2 for k, v in flat(params).items()}
  no_decay = {k for k, v in flat(labels.no_decay(params)).items() if v}
  assert no_decay == {"block/attn/qkv/bias", "block/norm1/scale", "block/norm1/bias"}
  assert {k for k, v in flat(labels.decay_mask(params)).items() if not v} == no_decay
  assert {k for k, v in flat(labels.norm_affine(params)).items() if v} == {
    "block/norm1/scale",
    "block/norm1/bias",
  }
  assert {k for k, v in flat(labels.head(params)).items() if v} == {"head/kernel"}
  assert {k for k, v in flat(labels.norm_affine_and_head(params)).items() if v} == {
    "block/norm1/scale",
    "block/norm1/bias",
    "head/kernel",
  }
  conda_leaves = {k for k, v in flat(labels.attention_mlp_kernels(params)).items() if v}
  assert conda_leaves == {
    "block/attn/qkv/kernel",
    "block/attn/proj/kernel",
    "block/mlp/fc/kernel",
    "block/mlp/fc_out/kernel",
  }
  groups = flat(labels.conda_groups(params))
  assert {k for k, v in groups.items() if v == "conda"} == conda_leaves
  assert groups["wte/embedding"] == groups["head/kernel"] == "adamw"


def mha_block():
  class Block(nnx.Module):
    def __init__(self, rngs):
      self.norm1 = nnx.LayerNorm(8, rngs=rngs)
      self.attn = nnx.MultiHeadAttention(
        num_heads=2, in_features=8, qkv_features=8, decode=False, rngs=rngs
      )
      self.mlp = nnx.Linear(8, 16, rngs=rngs)
      self.head = nnx.Linear(16, 3, rngs=rngs)

  return nnx.split(Block(nnx.Rngs(0)), nnx.Param, ...)[1]


def test_nnx_state_paths_and_3d_attention_kernels():
  params = mha_block()
  specs = flat(labels.attention_mlp_dimension_numbers(params))
  assert specs["attn/query/kernel/value"] == MatrixAxes(0, (1, 2))  # (in, heads, head_dim)
  assert specs["attn/out/kernel/value"] == MatrixAxes((0, 1), 2)  # (heads, head_dim, out)
  assert specs["mlp/kernel/value"] == MatrixAxes(0, 1)
  assert specs["head/kernel/value"] is None and specs["attn/query/bias/value"] is None
  assert flat(labels.decay_mask(params))["attn/query/bias/value"] is False  # 2-D bias
  assert flat(labels.norm_affine(params))["norm1/scale/value"] is True
  tx = conda(1e-2, conda_mask="attention_mlp_dimension_numbers")
  state = tx.init(params)
  bases = flat(state[0].basis)
  assert bases["attn/query/kernel/value"].shape == (8, 8)  # rows 8 <= cols 2*4
  assert bases["attn/out/kernel/value"].shape == (8, 8)
  assert bases["mlp/kernel/value"].shape == (8, 8)
  assert "head/kernel/value" not in bases  # MaskedNode: no array for a non-Conda leaf
  updates, _ = jax.jit(tx.update)(jax.tree.map(jnp.ones_like, params), state, params)
  assert all(np.all(np.isfinite(u)) for u in jax.tree.leaves(updates))


def test_scale_invariant_patterns():
  params = dict_params()
  mask = flat(labels.scale_invariant(params, patterns=("block/mlp/*/kernel", "head/*")))
  assert {k for k, v in mask.items() if v} == {
    "block/mlp/fc/kernel",
    "block/mlp/fc_out/kernel",
    "head/kernel",
  }


class ProbeNet(nnx.Module):
  """dense0 -> LayerNorm (scale-invariant kernel); dense1 with bias -> LayerNorm (not,
  because of the bias); conv -> BatchNorm (scale-invariant); head (not)."""

  def __init__(self, rngs):
    self.dense0 = nnx.Linear(6, 8, use_bias=False, rngs=rngs)
    self.norm0 = nnx.LayerNorm(8, rngs=rngs)
    self.dense1 = nnx.Linear(8, 8, bias_init=nnx.initializers.normal(1.0), rngs=rngs)
    self.norm1 = nnx.LayerNorm(8, rngs=rngs)
    self.conv = nnx.Conv(1, 4, (3, 3), use_bias=False, rngs=rngs)
    self.bn = nnx.BatchNorm(4, use_running_average=False, rngs=rngs)
    self.head = nnx.Linear(12, 3, rngs=rngs)

  def __call__(self, x, image):
    h = jax.nn.relu(self.norm0(self.dense0(x)))
    h = jax.nn.relu(self.norm1(self.dense1(h)))
    c = jax.nn.relu(self.bn(self.conv(image))).mean(axis=(1, 2))
    return self.head(jnp.concatenate([h[:, :8], c], axis=-1))


def test_probe_scale_invariance_matches_the_architecture():
  graphdef, params, rest = nnx.split(ProbeNet(nnx.Rngs(1)), nnx.Param, ...)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(5, 6)), jnp.float32)
  image = jnp.asarray(rng.normal(size=(5, 6, 6, 1)), jnp.float32)
  # model state (batch statistics) goes in as an input, not a closure
  apply_fn = lambda p, x, image, rest: nnx.merge(graphdef, p, rest)(x, image)
  found = {
    k for k, v in flat(labels.probe_scale_invariance(apply_fn, params, x, image, rest)).items() if v
  }
  assert found == {"dense0/kernel/value", "conv/kernel/value"}
  # consistent with the gradient: <grad, W> = 0 (up to the norms' eps) for those leaves
  loss = lambda p, r: jnp.sum(jnp.sin(apply_fn(p, x, image, r)))
  grads = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, rest)[0]  # both at one trace level
  for k, g in flat(grads).items():
    w = flat(params)[k]
    if w.ndim < 2:  # not candidates (and zero-initialised biases have cos = 0 trivially)
      continue
    cos = abs(float(jnp.vdot(g, w))) / (float(jnp.linalg.norm(g) * jnp.linalg.norm(w)) + 1e-30)
    assert (cos < 1e-3) == (k in found), (k, cos)  # BatchNorm eps: not exact


def test_registry_lookup_by_name():
  assert labels.LABELS.get("no_decay") is labels.no_decay
  for name in (
    "decay",
    "matrices",
    "norm_affine",
    "head",
    "norm_affine_and_head",
    "attention_mlp_kernels",
    "attention_mlp_dimension_numbers",
    "conda_groups",
    "scale_invariant",
  ):
    assert name in labels.LABELS.names()
  with pytest.raises(KeyError, match="known: .*no_decay"):
    labels.LABELS.get("nodecay")
  fn = labels.resolve("scale_invariant", patterns=("head/*",))
  assert flat(fn(dict_params()))["head/kernel"] is True
  assert labels.resolve(labels.matrices) is labels.matrices
  with pytest.raises(ValueError, match="label name"):
    labels.resolve(labels.matrices, patterns=("x",))
