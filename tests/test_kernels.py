"""normjax.kernels: every path against the plain formula, the dispatcher, sharding.

Oracles: a numpy float64 LayerNorm/RMSNorm written from the formula for the
forward, ``jax.vjp`` of ``normjax.kernels.reference`` (plain autodiff) for the
gradients, and finite differences (``jax.test_util.check_grads``, float64) for the
custom_vjp. Pallas kernels run with ``interpret=True`` on CPU.
"""

import contextlib
import io

import jax
import jax.ad_checkpoint
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from jax.test_util import check_grads

from normjax import kernels
from normjax.kernels import fused, pallas_norm

EPS = 1e-6


def numpy_layer_norm(x, scale, bias, eps=EPS):
  x = np.asarray(x, np.float64)
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean) ** 2).mean(-1, keepdims=True)
  y = (x - mean) / np.sqrt(var + eps) * np.asarray(scale, np.float64)
  return y if bias is None else y + np.asarray(bias, np.float64)


def numpy_rms_norm(x, scale, eps=EPS):
  x = np.asarray(x, np.float64)
  return x / np.sqrt((x**2).mean(-1, keepdims=True) + eps) * np.asarray(scale, np.float64)


def make_inputs(shape, dtype=jnp.float32, seed=0):
  keys = jax.random.split(jax.random.key(seed), 4)
  d = shape[-1]
  x = (jax.random.normal(keys[0], shape) * 2.0 + 0.5).astype(dtype)
  scale = 1.0 + 0.3 * jax.random.normal(keys[1], (d,))
  bias = 0.3 * jax.random.normal(keys[2], (d,))
  dy = jax.random.normal(keys[3], shape).astype(dtype)
  return x, scale, bias, dy


# Every path as f(x, scale, bias) -> y; bias=None means RMSNorm-free LayerNorm.
def _pallas(flavor, block_rows=8):
  return dict(flavor=flavor, block_rows=block_rows, interpret=True)


PATHS = {
  "reference": lambda norm, **kw: getattr(kernels, norm)(**kw, implementation="reference"),
  "fused": lambda norm, **kw: getattr(kernels, norm)(**kw, implementation="fused"),
  "pallas_blocked": lambda norm, **kw: getattr(pallas_norm, norm)(**kw, **_pallas("blocked")),
  "pallas_masked": lambda norm, **kw: getattr(pallas_norm, norm)(**kw, **_pallas("masked")),
}


def run(path, norm, x, scale, bias):
  if norm == "rms_norm":
    return PATHS[path](norm, x=x, scale=scale)
  return PATHS[path](norm, x=x, scale=scale, bias=bias)


def vjp_all(f, x, scale, bias, dy):
  if bias is None:
    y, vjp = jax.vjp(lambda x, s: f(x, s, None), x, scale)
    return (y, *vjp(dy))
  y, vjp = jax.vjp(f, x, scale, bias)
  return (y, *vjp(dy))


CASES = [("layer_norm", True), ("layer_norm", False), ("rms_norm", False)]


@pytest.mark.parametrize(
  "norm,with_bias,dtype",
  [
    ("layer_norm", True, jnp.float32),
    ("layer_norm", True, jnp.float64),
    ("layer_norm", False, jnp.float64),
    ("rms_norm", False, jnp.float64),
  ],
)
def test_reference_matches_numpy(norm, with_bias, dtype):
  with jax.enable_x64(dtype == jnp.float64):
    x, scale, bias, _ = make_inputs((5, 7, 24), dtype)
    bias = bias if with_bias else None
    y = run("reference", norm, x, scale, bias)
    want = numpy_layer_norm(x, scale, bias) if norm == "layer_norm" else numpy_rms_norm(x, scale)
    assert y.dtype == dtype
    np.testing.assert_allclose(y, want, rtol=0, atol=3e-6 if dtype == jnp.float32 else 1e-12)


# Several blocks and a ragged last one: 37 rows in blocks of 8; a 3-D shape with
# 3*5=15 rows; 96 and 40 features (not powers of two: the masked flavour pads).
ALL_PATHS = ["fused", "pallas_blocked", "pallas_masked"]
FORWARD_AND_GRADIENT_CASES = (
  [("layer_norm", True, (37, 96), jnp.float32, p) for p in ALL_PATHS]
  + [("layer_norm", False, (37, 96), jnp.float32, "fused")]
  + [("rms_norm", False, (37, 96), jnp.float32, p) for p in ALL_PATHS]
  + [("layer_norm", True, (37, 96), jnp.bfloat16, p) for p in ALL_PATHS]
  + [("rms_norm", False, (37, 96), jnp.bfloat16, "pallas_blocked")]
  + [("layer_norm", False, (3, 5, 40), jnp.float32, "pallas_masked")]
  + [("rms_norm", False, (3, 5, 40), jnp.float32, "pallas_blocked")]
  + [("rms_norm", False, (3, 5, 32), jnp.float32, "pallas_masked")]
)  # no column mask


@pytest.mark.parametrize("norm,with_bias,shape,dtype,path", FORWARD_AND_GRADIENT_CASES)
def test_forward_and_gradients_match_reference(norm, with_bias, shape, dtype, path):
  x, scale, bias, dy = make_inputs(shape, dtype)
  bias = bias if with_bias else None
  f = lambda x, s, b: run(path, norm, x, s, b)
  g = lambda x, s, b: run("reference", norm, x, s, b)
  got = jax.jit(lambda *a: vjp_all(f, *a))(x, scale, bias, dy)
  want = jax.jit(lambda *a: vjp_all(g, *a))(x, scale, bias, dy)
  if path == "fused":  # its forward has a separate form for when no gradient is taken
    inference = jax.jit(f)(x, scale, bias)
    np.testing.assert_allclose(
      np.asarray(inference, np.float32),
      np.asarray(got[0], np.float32),
      rtol=1e-5 if dtype == jnp.float32 else 1e-2,
      atol=1e-5 if dtype == jnp.float32 else 1e-2,
    )
  assert len(got) == len(want) == (4 if with_bias else 3)
  assert got[0].dtype == dtype and got[1].dtype == dtype
  assert got[2].dtype == scale.dtype
  # Forward against the float64 formula too (the reference is checked above).
  formula = (
    numpy_layer_norm(x.astype(jnp.float32), scale, bias)
    if norm == "layer_norm"
    else numpy_rms_norm(x.astype(jnp.float32), scale)
  )
  if dtype == jnp.float32:
    tol = dict(rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(got[0], formula, atol=5e-6, rtol=0)
  else:  # outputs and dx are rounded to bfloat16 (8 bits): allow ~2 ulp
    tol = dict(rtol=2e-2, atol=2e-2)
    np.testing.assert_allclose(np.asarray(got[0], np.float32), formula, rtol=1e-2, atol=1e-2)
  for a, b in zip(got, want):
    a = np.asarray(a, np.float32)
    b = np.asarray(b, np.float32)
    scale_of = max(1.0, float(np.abs(b).max()))
    np.testing.assert_allclose(a / scale_of, b / scale_of, **tol)


@pytest.mark.parametrize(
  "path,norm,with_bias",
  [
    ("fused", "layer_norm", True),
    ("fused", "rms_norm", False),
    ("pallas_blocked", "layer_norm", True),
    ("pallas_masked", "layer_norm", False),
    ("pallas_masked", "rms_norm", False),
  ],
)
def test_check_grads_float64(path, norm, with_bias):
  with jax.enable_x64(True):
    x, scale, bias, _ = make_inputs((11, 12), jnp.float64, seed=3)
    args = (x, scale.astype(jnp.float64)) + ((bias.astype(jnp.float64),) if with_bias else ())
    if norm == "rms_norm":
      f = lambda x, s: run(path, norm, x, s, None)
    elif with_bias:
      f = lambda x, s, b: run(path, norm, x, s, b)
    else:
      f = lambda x, s: run(path, norm, x, s, None)
    check_grads(f, args, order=1, modes=["rev"], atol=1e-6, rtol=1e-6)


def test_two_pass_variance_survives_a_large_mean():
  # E[x^2] - mean^2 in float32 would lose every digit of var=1 at mean=3000.
  x = 3000.0 + jax.random.normal(jax.random.key(1), (64, 128))
  scale, bias = jnp.ones(128), jnp.zeros(128)
  want = numpy_layer_norm(x, scale, bias)
  for path in ("fused", "pallas_blocked"):
    y = run(path, "layer_norm", x, scale, bias)
    np.testing.assert_allclose(y, want, atol=3e-3)  # float32 input rounding at 3000


@pytest.mark.parametrize(
  "path,norm", [("fused", "layer_norm"), ("fused", "rms_norm"), ("pallas_blocked", "layer_norm")]
)
def test_saved_residuals_are_x_scale_and_row_statistics(path, norm):
  x, scale, bias, _ = make_inputs((2, 8, 12))  # 16 rows of 12 features
  bias = bias if norm == "layer_norm" else None
  buffer = io.StringIO()
  with contextlib.redirect_stdout(buffer):
    jax.ad_checkpoint.print_saved_residuals(lambda x, s: run(path, norm, x, s, bias), x, scale)
  shapes = sorted(line.split()[0] for line in buffer.getvalue().splitlines() if line.strip())
  x_shape = [s for s in shapes if s in ("f32[2,8,12]", "f32[16,12]")]
  # x once (no xhat, no output), scale, and the per-row mean and rstd (RMS: rstd).
  assert len(x_shape) == 1, shapes
  expected = sorted(x_shape + ["f32[12]"] + ["f32[16]"] * (2 if norm == "layer_norm" else 1))
  assert shapes == expected


def test_dispatcher_choices(monkeypatch):
  x, scale, bias, _ = make_inputs((4, 8))
  monkeypatch.delenv(kernels.ENV_VAR, raising=False)
  assert kernels.resolve_implementation(x) == "fused"  # CPU default
  monkeypatch.setenv(kernels.ENV_VAR, "reference")
  assert kernels.resolve_implementation(x) == "reference"
  with kernels.use_implementation("pallas_interpret"):
    assert kernels.resolve_implementation(x) == "pallas_interpret"
    assert kernels.resolve_implementation(x, "fused") == "fused"
  assert kernels.resolve_implementation(x) == "reference"
  kernels.set_implementation("fused")
  try:
    assert kernels.resolve_implementation(x) == "fused"
  finally:
    kernels.set_implementation(None)
  monkeypatch.setenv(kernels.ENV_VAR, "bogus")
  with pytest.raises(ValueError, match="NORMJAX_KERNELS='bogus'"):
    kernels.resolve_implementation(x)
  with pytest.raises(ValueError, match="pallas_interpret"):
    kernels.layer_norm(x, scale, bias, implementation="pallas")  # no GPU/TPU here
  with pytest.raises(ValueError, match="implementation='triton'"):
    kernels.set_implementation("triton")


def test_dispatcher_runs_the_chosen_path():
  x, scale, bias, _ = make_inputs((4, 8))

  def jaxpr(name):
    return str(jax.make_jaxpr(lambda x: kernels.layer_norm(x, scale, bias, implementation=name))(x))

  assert "custom_vjp" not in jaxpr("reference")
  assert "custom_vjp" in jaxpr("fused") and "pallas_call" not in jaxpr("fused")
  assert "pallas_call" in jaxpr("pallas_interpret")


@pytest.mark.parametrize("name", ["fused", "pallas_interpret"])
def test_scale_none_means_no_scale(name):
  x, _, bias, dy = make_inputs((6, 16))
  ones = jnp.ones(16)
  for f, g in [
    (
      lambda x: kernels.layer_norm(x, None, bias, implementation=name),
      lambda x: kernels.layer_norm(x, ones, bias, implementation="reference"),
    ),
    (
      lambda x: kernels.rms_norm(x, None, implementation=name),
      lambda x: kernels.rms_norm(x, ones, implementation="reference"),
    ),
  ]:
    both = jax.jit(lambda x, dy: [(y, vjp(dy)[0]) for y, vjp in (jax.vjp(f, x), jax.vjp(g, x))])
    (y, dx), (y_want, dx_want) = both(x, dy)
    np.testing.assert_allclose(y, y_want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dx, dx_want, rtol=1e-5, atol=1e-5)


def test_bad_arguments_name_the_argument():
  x, scale, bias, _ = make_inputs((4, 8))
  with pytest.raises(ValueError, match=r"scale.shape=\(7,\)"):
    kernels.layer_norm(x, scale[:7], bias)
  with pytest.raises(ValueError, match=r"bias.shape"):
    kernels.layer_norm(x, scale, bias[:3])
  with pytest.raises(ValueError, match="epsilon=-1"):
    kernels.rms_norm(x, scale, epsilon=-1)
  with pytest.raises(ValueError, match="block_rows"):
    pallas_norm.layer_norm(x, scale, flavor="masked", block_rows=6, interpret=True)


@pytest.mark.parametrize("name", ["fused", "pallas_interpret"])
def test_vmap_with_batched_scale(name):
  x, _, _, dy = make_inputs((3, 10, 16))
  scales = 1.0 + 0.1 * jax.random.normal(jax.random.key(5), (3, 16))

  def loss(f, x, s):
    return jnp.sum(jax.vmap(f)(x, s) * dy)

  f = lambda x, s: kernels.rms_norm(x, s, implementation=name)
  g = lambda x, s: kernels.rms_norm(x, s, implementation="reference")
  got = jax.jit(jax.value_and_grad(lambda x, s: loss(f, x, s), argnums=(0, 1)))(x, scales)
  want = jax.jit(jax.value_and_grad(lambda x, s: loss(g, x, s), argnums=(0, 1)))(x, scales)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def _mesh(axis_type):
  if jax.device_count() < 8:
    pytest.skip("needs 8 (virtual) devices: XLA_FLAGS=--xla_force_host_platform_device_count=8")
  return jax.make_mesh((8,), ("data",), axis_types=(axis_type,))


def _loss_and_grads(name, x, scale, bias, dy):
  def loss(x, scale, bias):
    return jnp.sum(kernels.layer_norm(x, scale, bias, implementation=name) * dy)

  return jax.value_and_grad(loss, argnums=(0, 1, 2))(x, scale, bias)


@pytest.mark.parametrize(
  "name,axis_type",
  [
    ("fused", jax.sharding.AxisType.Explicit),
    ("fused", jax.sharding.AxisType.Auto),
    ("pallas_interpret", jax.sharding.AxisType.Explicit),
  ],
)
def test_sharded_jit_equals_unsharded(name, axis_type):
  mesh = _mesh(axis_type)
  x, scale, bias, dy = make_inputs((16, 5, 24))
  step = jax.jit(_loss_and_grads, static_argnums=0)
  want = step(name, x, scale, bias, dy)
  rows = NamedSharding(mesh, P("data"))
  xs, dys = jax.device_put(x, rows), jax.device_put(dy, rows)
  with jax.set_mesh(mesh):
    got = step(name, xs, scale, bias, dys)
    jaxpr = str(jax.make_jaxpr(_loss_and_grads, static_argnums=0)(name, xs, scale, bias, dys))
  assert ("shard_map" in jaxpr) == name.startswith("pallas")  # kernel runs per shard
  assert got[1][0].sharding.spec[0] == "data"
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("norm", ["layer_norm", "rms_norm"])
def test_fused_row_blocks_match_reference(norm):
  # 256 rows in lax.scan blocks of 8 rows.
  x, scale, bias, dy = make_inputs((4, 64, 24))
  bias = bias if norm == "layer_norm" else None
  blocked = fused.xla_kernels(backward_block_values=8 * 24)
  assert fused._row_block(x.reshape(-1, 24), 8 * 24) == 8
  if norm == "layer_norm":
    f = lambda x, s, b: fused.layer_norm(x, s, b, kernels=blocked)
  else:
    f = lambda x, s, b: fused.rms_norm(x, s, kernels=blocked)
  got = jax.jit(lambda *a: vjp_all(f, *a))(x, scale, bias, dy)
  want = vjp_all(lambda x, s, b: run("reference", norm, x, s, b), x, scale, bias, dy)
  assert "scan" in str(jax.make_jaxpr(lambda *a: vjp_all(f, *a))(x, scale, bias, dy))
  for a, b in zip(got, want):
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5)


def test_fused_row_blocks_under_sharded_jit_without_mesh():
  if jax.device_count() < 8:
    pytest.skip("needs 8 (virtual) devices")
  mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  x, scale, bias, dy = make_inputs((16, 16, 24))
  blocked = fused.xla_kernels(8 * 24)

  def loss(x, s, b, dy):
    return jnp.sum(fused.layer_norm(x, s, b, kernels=blocked) * dy)

  grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
  rows = NamedSharding(mesh, P("data"))
  got = grads(jax.device_put(x, rows), scale, bias, jax.device_put(dy, rows))
  want = grads(x, scale, bias, dy)
  for a, b in zip(got, want):
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("platform,flavor", [("cuda", "masked"), ("tpu", "blocked")])
def test_pallas_kernels_lower_for_gpu_and_tpu(platform, flavor):
  # Cross-platform lowering runs the Triton / Mosaic lowering rules on this CPU
  # machine: block shapes, power-of-two sizes and supported ops are checked
  # (compiling and running them still needs the device).
  x = jax.ShapeDtypeStruct((37, 96), jnp.bfloat16)
  s = jax.ShapeDtypeStruct((96,), jnp.float32)

  def both(x, s, dy):
    ln = jax.vjp(lambda x, s: pallas_norm.layer_norm(x, s, s, flavor=flavor), x, s)
    rms = jax.vjp(lambda x, s: pallas_norm.rms_norm(x, s, flavor=flavor), x, s)
    return ln[1](dy), rms[1](dy)

  text = jax.jit(both).trace(x, s, x).lower(lowering_platforms=(platform,)).as_text()
  assert "custom_call" in text


def test_fused_row_blocks_on_a_one_device_explicit_mesh():
  # The trainer's CPU default: rows typed as sharded over a 1-device mesh.
  mesh = jax.make_mesh((1,), ("data",), axis_types=(jax.sharding.AxisType.Explicit,))
  x, scale, bias, dy = make_inputs((4, 64, 24))
  blocked = fused.xla_kernels(8 * 24)

  def loss(x, s, b):
    return jnp.sum(
      (fused.layer_norm(x, s, b, kernels=blocked) + fused.rms_norm(x, s, kernels=blocked)) * dy
    )

  want = jax.grad(loss, argnums=(0, 1, 2))(x, scale, bias)
  with jax.set_mesh(mesh):
    xs = jax.device_put(x, NamedSharding(mesh, P("data")))
    assert "scan" in str(jax.make_jaxpr(jax.grad(loss))(xs, scale, bias))
    got = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(xs, scale, bias)
  assert got[0].sharding.spec[0] == "data"
  for a, b in zip(got, want):
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5)
