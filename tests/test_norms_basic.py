"""Basic norms against numpy float64 references written from the formulas."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from normjax.norms import basic, make_norm, uses_batch_statistics

RNG = np.random.default_rng(0)
C = 8


def _data(shape, offset=3.0, spread=2.0):
  return (offset + spread * RNG.standard_normal(shape)).astype(np.float32)


def _with_random_affine(norm):
  """Gives the module's scale/bias random values so the affine part is tested too."""
  for name in ("scale", "bias"):
    var = getattr(norm, name, None)
    if isinstance(var, nnx.Param):
      var[...] = jnp.asarray(RNG.standard_normal(var.shape), jnp.float32)
  return norm


def _affine(z, norm):
  z = z * np.asarray(norm.scale[...], np.float64) if norm.scale is not None else z
  return z + np.asarray(norm.bias[...], np.float64) if norm.bias is not None else z


# ----------------------------------------------------------------------- references (float64)
def ref_layer_norm(x, eps):
  x = x.astype(np.float64)
  return (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + eps)


def ref_rms_norm(x, eps):
  x = x.astype(np.float64)
  return x / np.sqrt((x**2).mean(-1, keepdims=True) + eps)


def ref_batch_stats(x, mask=None):
  """Per-channel mean and population variance over the real positions of every example."""
  rows = x.astype(np.float64).reshape(-1, x.shape[-1])
  if mask is not None:
    rows = rows[np.broadcast_to(mask, x.shape[:-1]).reshape(-1)]
  return rows.mean(0), rows.var(0)


def ref_group_norm(x, groups, eps, mask=None):
  out = np.empty(x.shape, np.float64)
  size = x.shape[-1] // groups
  for b in range(x.shape[0]):
    for g in range(groups):
      block = x[b, ..., g * size : (g + 1) * size].astype(np.float64)
      real = block if mask is None else block[mask[b]]
      out[b, ..., g * size : (g + 1) * size] = (block - real.mean()) / np.sqrt(real.var() + eps)
  return out


def ref_instance_norm(x, eps, mask=None):
  out = np.empty(x.shape, np.float64)
  for b in range(x.shape[0]):
    for c in range(x.shape[-1]):
      plane = x[b, ..., c].astype(np.float64)
      real = plane if mask is None else plane[mask[b]]
      out[b, ..., c] = (plane - real.mean()) / np.sqrt(real.var() + eps)
  return out


# ----------------------------------------------------------------------- forward vs reference
@pytest.mark.parametrize("shape", [(4, 5, C), (2, 3, 4, C)])
def test_per_example_norms_match_reference(shape):
  x = _data(shape)
  cases = [
    ("layernorm", {}, lambda x: ref_layer_norm(x, 1e-6)),
    ("rmsnorm", {"epsilon": 1e-3}, lambda x: ref_rms_norm(x, 1e-3)),
    ("groupnorm", {"num_groups": 4}, lambda x: ref_group_norm(x, 4, 1e-6)),
    ("groupnorm", {"group_size": 4}, lambda x: ref_group_norm(x, 2, 1e-6)),
    ("instancenorm", {}, lambda x: ref_instance_norm(x, 1e-6)),
  ]
  for name, kwargs, reference in cases:
    norm = _with_random_affine(make_norm(name, C, rngs=nnx.Rngs(0), **kwargs))
    y = norm(jnp.asarray(x))
    np.testing.assert_allclose(
      y, _affine(reference(x), norm), rtol=2e-5, atol=2e-5, err_msg=f"{name} {kwargs}"
    )
    assert y.dtype == jnp.float32


def test_default_epsilons_follow_flax():
  for name in ("layernorm", "rmsnorm", "groupnorm", "instancenorm"):
    assert make_norm(name, 64, rngs=nnx.Rngs(0)).epsilon == 1e-6
  bn = make_norm("batchnorm", C, rngs=nnx.Rngs(0))
  assert (bn.epsilon, bn.momentum) == (1e-5, 0.99)
  assert make_norm("groupnorm", 64, rngs=nnx.Rngs(0)).num_groups == 32
  assert set(nnx.state(make_norm("rmsnorm", C, rngs=nnx.Rngs(0)), nnx.Param)) == {"scale"}
  assert set(nnx.state(bn, nnx.BatchStat)) == {"mean", "var"}


def test_batchnorm_train_update_rule_and_eval():
  x = _data((6, 3, 3, C))
  bn = _with_random_affine(make_norm("batchnorm", C, momentum=0.9, epsilon=1e-3, rngs=nnx.Rngs(0)))
  old_mean, old_var = RNG.standard_normal(C), 1 + RNG.random(C)
  bn.mean[...], bn.var[...] = jnp.asarray(old_mean, jnp.float32), jnp.asarray(old_var, jnp.float32)
  y = bn(jnp.asarray(x))
  mean, var = ref_batch_stats(x)
  np.testing.assert_allclose(y, _affine((x - mean) / np.sqrt(var + 1e-3), bn), rtol=2e-5, atol=2e-5)
  np.testing.assert_allclose(bn.mean[...], 0.9 * old_mean + 0.1 * mean, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(bn.var[...], 0.9 * old_var + 0.1 * var, rtol=1e-5)
  # eval: the running statistics, no update, no dependence on the rest of the batch
  running_mean, running_var = np.asarray(bn.mean[...]), np.asarray(bn.var[...])
  bn.eval()
  y_eval = bn(jnp.asarray(x))
  np.testing.assert_allclose(
    y_eval, _affine((x - running_mean) / np.sqrt(running_var + 1e-3), bn), rtol=2e-5, atol=2e-5
  )
  np.testing.assert_array_equal(bn.mean[...], running_mean)
  np.testing.assert_array_equal(bn(jnp.asarray(x[:1])), y_eval[:1])


def test_batchnorm_pure_function_matches_module_and_gradient_flows_through_stats():
  x = jnp.asarray(_data((5, 4, C)))
  state = {"mean": jnp.zeros(C), "var": jnp.ones(C)}
  y, new_state = basic.batch_norm(x, {}, state, train=True)
  bn = make_norm("batchnorm", C, use_scale=False, use_bias=False, rngs=nnx.Rngs(0))
  np.testing.assert_array_equal(bn(x), y)
  np.testing.assert_array_equal(bn.var[...], new_state["var"])
  # d/dx sum(BN(x)) = 0 exactly when the batch mean is differentiated through
  grad = jax.grad(lambda x: basic.batch_norm(x, {}, state, train=True)[0].sum())(x)
  np.testing.assert_allclose(grad, 0.0, atol=1e-5)


def test_masked_statistics_use_only_real_tokens():
  x = _data((3, 6, C))
  mask = np.ones((3, 6), bool)
  mask[0, 4:], mask[2, 1:] = False, False
  x_padded = np.where(mask[..., None], x, 1e4).astype(np.float32)  # padding must not count
  bn = make_norm("batchnorm", C, momentum=0.0, rngs=nnx.Rngs(0))
  y = bn(jnp.asarray(x_padded), mask=jnp.asarray(mask))
  mean, var = ref_batch_stats(x, mask)
  np.testing.assert_allclose(
    np.asarray(y)[mask], ((x - mean) / np.sqrt(var + 1e-5))[mask], rtol=2e-5, atol=2e-5
  )
  np.testing.assert_allclose(bn.mean[...], mean, rtol=1e-5, atol=1e-5)  # momentum 0: batch stat
  np.testing.assert_allclose(bn.var[...], var, rtol=1e-5)
  for name, reference in [
    ("groupnorm", lambda v: ref_group_norm(v, 2, 1e-6, mask)),
    ("instancenorm", lambda v: ref_instance_norm(v, 1e-6, mask)),
  ]:
    kwargs = {"num_groups": 2} if name == "groupnorm" else {}
    y = make_norm(name, C, rngs=nnx.Rngs(0), **kwargs)(jnp.asarray(x_padded), mask=mask)
    np.testing.assert_allclose(
      np.asarray(y)[mask], reference(x_padded)[mask], rtol=2e-5, atol=2e-5, err_msg=name
    )
  for name in ("layernorm", "rmsnorm", "none"):  # per-token: the mask changes nothing
    norm = make_norm(name, C, rngs=nnx.Rngs(0))
    np.testing.assert_array_equal(norm(jnp.asarray(x), mask=mask), norm(jnp.asarray(x)))


def test_bfloat16_inputs_use_float32_statistics():
  x = _data((4, 64), offset=100.0, spread=1.0)  # large mean: bf16 statistics would fail
  x_bf16 = jnp.asarray(x, jnp.bfloat16)
  exact = np.asarray(x_bf16.astype(jnp.float32))
  for name, reference in [
    ("layernorm", lambda v: ref_layer_norm(v, 1e-6)),
    ("rmsnorm", lambda v: ref_rms_norm(v, 1e-6)),
  ]:
    y = make_norm(name, 64, rngs=nnx.Rngs(0))(x_bf16)
    assert y.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(y, np.float32), reference(exact), atol=3e-2, err_msg=name)
  bn = make_norm("batchnorm", 64, rngs=nnx.Rngs(0))
  assert bn(x_bf16).dtype == jnp.bfloat16 and bn.mean[...].dtype == jnp.float32


def test_none_is_identity_without_variables():
  norm = make_norm("none", C, rngs=nnx.Rngs(0))
  x = jnp.asarray(_data((2, 3, C)))
  np.testing.assert_array_equal(norm(x, mask=jnp.ones((2, 3), bool)), x)
  assert not jax.tree.leaves(nnx.state(norm))


def test_train_eval_switch_through_a_parent_module():
  class Net(nnx.Module):
    def __init__(self):
      self.norm = make_norm("batchnorm", C, rngs=nnx.Rngs(0))

  net = Net()
  assert net.norm.use_running_average is False
  net.eval()
  assert net.norm.use_running_average is True
  net.train()
  assert net.norm.use_running_average is False
  assert nnx.view(net, use_running_average=True).norm.use_running_average is True
  assert uses_batch_statistics("batchnorm")
  assert not any(
    uses_batch_statistics(n) for n in ("layernorm", "rmsnorm", "groupnorm", "instancenorm", "none")
  )


def test_bad_arguments_name_the_argument():
  with pytest.raises(KeyError, match="model.norm='nope'.*batchnorm.*layernorm"):
    make_norm("nope", C, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="num_groups=3.*num_features=8.*valid: \\[1, 2, 4, 8\\]"):
    make_norm("groupnorm", C, num_groups=3, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="group_size=3"):
    make_norm("groupnorm", C, group_size=3, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="momentum=1.5"):
    make_norm("batchnorm", C, momentum=1.5, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="epsilon=0"):
    make_norm("layernorm", C, epsilon=0, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="num_features=8.*4 channels"):
    make_norm("layernorm", C, rngs=nnx.Rngs(0))(jnp.ones((2, 4)))
  with pytest.raises(ValueError, match="instancenorm needs"):
    make_norm("instancenorm", C, rngs=nnx.Rngs(0))(jnp.ones((2, C)))


# ----------------------------------------------------------------------- data-parallel sharding
@pytest.mark.parametrize("explicit", [False, True])
def test_batchnorm_sharded_over_data_axis_equals_unsharded(explicit):
  """Under jit, a batch split over 8 devices gives the GLOBAL batch statistics."""
  assert jax.device_count() == 8, "tests/conftest.py should give 8 virtual CPU devices"
  x = _data((16, 5, C))
  x[:8] += 5.0  # devices see different data: per-shard statistics would differ from global
  mesh = jax.make_mesh(
    (8,),
    ("data",),
    axis_types=(jax.sharding.AxisType.Explicit if explicit else jax.sharding.AxisType.Auto,),
  )
  bn = _with_random_affine(make_norm("batchnorm", C, momentum=0.5, rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(bn)

  @jax.jit
  def train_forward(state, x):
    module = nnx.merge(graphdef, state)
    return module(x), nnx.state(module)

  y_ref, state_ref = train_forward(state, jnp.asarray(x))
  with jax.set_mesh(mesh):
    x_sharded = jax.device_put(jnp.asarray(x), NamedSharding(mesh, P("data")))
    y, new_state = train_forward(state, x_sharded)
    y_pure, pure_state = jax.jit(basic.batch_norm, static_argnames="train")(
      x_sharded, {}, {"mean": jnp.zeros(C), "var": jnp.ones(C)}, train=True
    )
  assert y.sharding.spec[0] == "data"
  np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
  for key in ("mean", "var"):
    np.testing.assert_allclose(new_state[key][...], state_ref[key][...], rtol=1e-6, atol=1e-6)
  mean, var = ref_batch_stats(x)
  np.testing.assert_allclose(new_state["mean"][...], 0.5 * mean, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(pure_state["var"], 0.99 + 0.01 * var, rtol=1e-5)
  np.testing.assert_allclose(y_pure, (x - mean) / np.sqrt(var + 1e-5), rtol=2e-5, atol=2e-5)
