"""Group min-max quantization (VITA-Group/Q-GaLore ``_quantize``) and the quantized weights."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from normjax.optim import QuantizedArray, float_weights, quantized_weights
from normjax.optim._quantize import dequantize, pack_codes, quantize, unpack_codes


def official_quantize(w, group_size, bits, uniform=None):
  """numpy float64 re-statement of the official _quantize / _quantize_stochastic_round."""
  shape = w.shape
  w = w.reshape(-1, group_size)
  hi, lo = w.max(axis=1, keepdims=True), w.min(axis=1, keepdims=True)
  top = 2**bits - 1
  scales = np.maximum(hi - lo, 1e-5) / top
  zeros = np.clip(-np.round(lo / scales), 0, top)
  if uniform is None:
    q = np.round(w / scales)
  else:
    r = w / scales
    q = np.where(uniform.reshape(r.shape) < r - np.floor(r), np.ceil(r), np.floor(r))
  q = np.clip(q + zeros, 0, top).astype(np.uint8)
  return q.reshape(shape), scales, zeros


def centred(rng, shape):
  """Values whose every group's range contains 0 (where the s/2 bound holds)."""
  return rng.standard_normal(shape)


@pytest.mark.parametrize("bits", [4, 8])
def test_round_to_nearest_matches_official_and_error_is_at_most_half_a_step(bits):
  rng = np.random.default_rng(0)
  with jax.enable_x64(True):
    w = centred(rng, (16, 64))
    qa = quantize(jnp.asarray(w), bits, 256)
    q, s, z = official_quantize(w, 256, bits)
    np.testing.assert_array_equal(np.asarray(qa.q), q)
    np.testing.assert_allclose(np.asarray(qa.scale), s, rtol=1e-15)
    np.testing.assert_array_equal(np.asarray(qa.zero), z)
    back = np.asarray(dequantize(qa, w.shape, jnp.float64, bits, 256))
  err = np.abs(back - w).reshape(-1, 256)
  assert np.all(err <= s / 2 * (1 + 1e-9)), (err / s).max()
  assert (err / s).max() > 0.4  # the bound is nearly reached: it tests something


def test_last_short_group_is_padded_without_changing_full_groups():
  rng = np.random.default_rng(1)
  w = rng.standard_normal(256 * 3 + 100).astype(np.float32)
  qa = quantize(jnp.asarray(w), 8, 256)
  q, _, _ = official_quantize(w[: 256 * 3], 256, 8)
  np.testing.assert_array_equal(np.asarray(qa.q)[: 256 * 3], q)
  assert qa.scale.shape == (4, 1)
  tail = w[256 * 3 :]
  np.testing.assert_allclose(float(qa.scale[3, 0]), (tail.max() - tail.min()) / 255, rtol=1e-6)
  back = np.asarray(dequantize(qa, w.shape, jnp.float32, 8, 256))
  assert np.abs(back - w).max() <= float(qa.scale.max()) / 2 * 1.0001


def test_stochastic_rounding_matches_official_given_the_same_uniforms():
  rng = np.random.default_rng(2)
  w = rng.standard_normal((4, 128)).astype(np.float32)
  key = jax.random.key(3)
  qa = quantize(jnp.asarray(w), 8, 256, key)
  u = np.asarray(jax.random.uniform(key, (2, 256), jnp.float32))
  q, _, _ = official_quantize(w.astype(np.float64), 256, 8, u)
  # float32 vs float64 ratios may put a uniform on the other side of the fraction rarely
  assert np.mean(np.asarray(qa.q) == q) > 0.999


def test_stochastic_rounding_is_unbiased_over_many_keys():
  rng = np.random.default_rng(4)
  w = jnp.asarray(rng.standard_normal(256), jnp.float32)
  n = 10_000

  @jax.jit
  def draws(keys):
    one = lambda k: dequantize(quantize(w, 8, 256, k), w.shape, jnp.float32, 8, 256)
    return jax.vmap(one)(keys)

  samples = np.asarray(draws(jax.random.split(jax.random.key(0), n)), np.float64)
  mean, se = samples.mean(0), samples.std(0) / np.sqrt(n) + 1e-12
  z = (mean - np.asarray(w)) / se
  assert np.mean(np.abs(z) < 3) > 0.98, np.abs(z).max()
  nearest = np.asarray(dequantize(quantize(w, 8, 256), w.shape, jnp.float32, 8, 256))
  assert np.abs(nearest - np.asarray(w)).mean() > 10 * np.abs(mean - np.asarray(w)).mean()


def test_tiny_update_moves_codes_with_the_right_probability():
  """A weight moved by a fraction f of a step rounds up with probability f (SR); RTN keeps
  every code for f < 1/2 (the stalled updates SR avoids)."""
  s, f = 1.0 / 128, 0.2
  group = s * (np.arange(256) - 128.0)  # on the grid: step s, zero point 128, codes 0..255
  w = group.copy()
  w[1:-1] += f * s  # interior entries (min and max, hence the grid, unchanged)
  store = quantized_weights(8, 256, "stochastic", mask=lambda p: {"w": True}, seed=0)
  stored = store.init({"w": jnp.asarray(group, jnp.float32)})
  before = np.asarray(stored["w"].q)
  updates = {"w": jnp.asarray(w - group, jnp.float32)}
  moved = []
  for step in range(200):
    new = store.apply(stored, updates, jnp.int32(step))
    moved.append(np.mean(np.asarray(new["w"].q)[1:-1] != before[1:-1]))
  assert abs(np.mean(moved) - f) < 0.01, np.mean(moved)
  rtn = quantized_weights(8, 256, "nearest", mask=lambda p: {"w": True})
  assert np.array_equal(np.asarray(rtn.apply(stored, updates, jnp.int32(0))["w"].q), before)


@pytest.mark.parametrize("bits", [1, 2, 4])
def test_packing_round_trips_and_halves_the_bytes_at_four_bits(bits):
  rng = np.random.default_rng(5)
  codes = jnp.asarray(rng.integers(0, 2**bits, 1001), jnp.uint8)
  packed = pack_codes(codes, bits)
  assert packed.nbytes == -(-1001 * bits // 8)
  np.testing.assert_array_equal(np.asarray(unpack_codes(packed, bits, 1001)), np.asarray(codes))
  w = jnp.asarray(rng.standard_normal((32, 128)), jnp.float32)
  a, b = quantize(w, bits, 256), quantize(w, bits, 256, pack=True)
  np.testing.assert_array_equal(
    np.asarray(dequantize(a, w.shape, jnp.float32, bits, 256)),
    np.asarray(dequantize(b, w.shape, jnp.float32, bits, 256, pack=True)),
  )
  assert a.q.nbytes == w.size and b.q.nbytes == w.size * bits // 8


def test_weight_storage_apply_is_keyed_by_step_and_float_storage_is_apply_updates():
  rng = np.random.default_rng(6)
  params = {
    "k": jnp.asarray(rng.standard_normal((16, 32)) * 0.02, jnp.float32),
    "b": jnp.zeros((32,), jnp.float32),
  }
  updates = jax.tree.map(lambda x: jnp.full(x.shape, 1e-4, x.dtype), params)
  store = quantized_weights(8, 256, "stochastic", mask=lambda p: {"k": True, "b": False})
  stored = store.init(params)
  assert isinstance(stored["k"], QuantizedArray) and stored["k"].q.dtype == jnp.uint8
  assert stored["k"].q.shape == (16, 32) and stored["k"].scale.shape == (2, 1)
  assert stored["k"].q.nbytes * 4 == params["k"].nbytes
  a = jax.jit(store.apply)(stored, updates, jnp.int32(7))
  b = jax.jit(store.apply)(stored, updates, jnp.int32(7))
  c = jax.jit(store.apply)(stored, updates, jnp.int32(8))
  assert np.array_equal(np.asarray(a["k"].q), np.asarray(b["k"].q))
  assert not np.array_equal(np.asarray(a["k"].q), np.asarray(c["k"].q))
  np.testing.assert_array_equal(np.asarray(a["b"]), np.asarray(params["b"] + updates["b"]))
  # round to nearest of the dequantized weights plus the update, fresh min/max (official)
  rtn = quantized_weights(8, 256, "nearest", mask=lambda p: {"k": True, "b": False})
  got = rtn.apply(stored, updates, jnp.int32(0))["k"]
  w = np.asarray(store.decode(stored)["k"], np.float64) + 1e-4
  q, _, _ = official_quantize(w, 256, 8)
  assert np.mean(np.asarray(got.q) == q) > 0.999
  plain = float_weights()
  np.testing.assert_array_equal(
    np.asarray(plain.apply(params, updates, jnp.int32(0))["k"]),
    np.asarray(optax.apply_updates(params, updates)["k"]),
  )


@pytest.mark.parametrize(
  "kwargs, message",
  [
    (dict(bits=9), "weight_quant.bits=9"),
    (dict(bits=0), "weight_quant.bits=0"),
    (dict(group_size=0), "weight_quant.group_size=0"),
    (dict(rounding="up"), "weight_quant.rounding='up'"),
  ],
)
def test_bad_weight_quantization_fails_with_a_message(kwargs, message):
  with pytest.raises(ValueError, match=message.replace("(", r"\(")):
    quantized_weights(**kwargs)
