"""normjax.kernels.attention: every implementation against the formula written here."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from normjax.kernels import attention as attn


def formula(q, k, v, *, causal, mask=None):
  """softmax(q k^T / sqrt(D) [masked]) v in numpy float64, fully masked rows uniform."""
  q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
  scores = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
  allowed = np.ones(scores.shape, bool)
  if causal:
    allowed &= np.tril(np.ones(scores.shape[-2:], bool))
  if mask is not None:
    allowed &= np.asarray(mask)
  scores = np.where(allowed, scores, np.finfo(np.float64).min)
  scores -= scores.max(-1, keepdims=True)
  probs = np.exp(scores)
  probs /= probs.sum(-1, keepdims=True)
  return np.einsum("bhqk,bkhd->bqhd", probs, v)


@pytest.fixture
def x64():
  with jax.enable_x64(True):
    yield


def inputs(t, dtype=jnp.float32, b=2, h=3, d=8, seed=0):
  keys = jax.random.split(jax.random.key(seed), 3)
  return [jax.random.normal(key, (b, t, h, d), dtype) for key in keys]


@pytest.mark.parametrize("t", [37, 64, 130])  # ragged last block (37, 130) and exact (64)
@pytest.mark.parametrize("causal", [True, False])
def test_blocked_matches_formula_float64(t, causal, x64):
  q, k, v = inputs(t, jnp.float64)
  out = attn.blocked_attention(q, k, v, is_causal=causal)
  np.testing.assert_allclose(out, formula(q, k, v, causal=causal), rtol=1e-12, atol=1e-12)


def test_blocked_splits_causal_queries_into_blocks():
  """The causal form computes fewer score entries than Tq x Tk (the skipped blocks)."""
  q, k, v = inputs(128)
  jaxpr = jax.make_jaxpr(lambda q, k, v: attn.blocked_attention(q, k, v, is_causal=True))(q, k, v)
  score_sizes = [e.outvars[0].aval.size for e in jaxpr.eqns if e.primitive.name == "dot_general"]
  full = 2 * 3 * 128 * 128
  assert len(score_sizes) == 2 * attn.CAUSAL_BLOCKS
  assert sum(score_sizes[::2]) < 0.6 * full


@pytest.mark.parametrize("causal", [True, False])
def test_blocked_with_key_padding_mask(causal, x64):
  """A (B, 1, 1, T) key mask, including a query row with no allowed key (uniform row)."""
  t = 37
  q, k, v = inputs(t, jnp.float64)
  mask = np.ones((2, 1, 1, t), bool)
  mask[0, ..., :5] = False  # causal: queries 0-4 of batch 0 have no key at all
  mask[1, ..., 20:] = False
  out = attn.blocked_attention(q, k, v, mask=jnp.asarray(mask), is_causal=causal)
  np.testing.assert_allclose(out, formula(q, k, v, causal=causal, mask=mask), rtol=1e-12)
  xla = jax.nn.dot_product_attention(
    *(a.astype(jnp.float32) for a in (q, k, v)), mask=mask, is_causal=causal
  )
  np.testing.assert_allclose(out, xla, rtol=2e-5, atol=2e-5)


def test_blocked_gradient_matches_formula(x64):
  q, k, v = inputs(45, jnp.float64, seed=1)
  cot = jax.random.normal(jax.random.key(7), q.shape, jnp.float64)

  def grads(fn):
    return jax.vjp(lambda q, k, v: fn(q, k, v), q, k, v)[1](cot)

  blocked = grads(lambda q, k, v: attn.blocked_attention(q, k, v, is_causal=True))
  reference = grads(lambda q, k, v: attn.reference_attention(q, k, v, is_causal=True))
  for a, b in zip(blocked, reference):
    np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("implementation", ["xla", "jax", "blocked", "reference"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_every_implementation_matches_formula(implementation, dtype):
  q, k, v = inputs(40, dtype)
  out = attn.attention(q, k, v, is_causal=True, implementation=implementation)
  assert out.dtype == dtype
  tol = 2e-5 if dtype == jnp.float32 else 3e-2
  np.testing.assert_allclose(
    np.asarray(out, np.float64), formula(q, k, v, causal=True), rtol=tol, atol=tol
  )


def test_float64_never_takes_the_float32_xla_path(x64):
  q, k, v = inputs(20, jnp.float64)
  out = attn.attention(q, k, v, is_causal=True, implementation="xla")
  np.testing.assert_allclose(out, formula(q, k, v, causal=True), rtol=1e-12, atol=1e-12)


def test_resolve(monkeypatch):
  monkeypatch.delenv(attn.ENV_VAR, raising=False)
  assert attn.resolve() == "blocked"  # auto on CPU
  monkeypatch.setenv(attn.ENV_VAR, "xla")
  assert attn.resolve() == "xla"
  assert attn.resolve("reference") == "reference"  # the argument wins
  monkeypatch.setenv(attn.ENV_VAR, "flash")
  with pytest.raises(ValueError, match="NORMJAX_ATTENTION='flash'"):
    attn.resolve()
  with pytest.raises(ValueError, match="implementation='nope'"):
    attn.resolve("nope")


def test_gpt2_forward_same_with_either_implementation(monkeypatch):
  """The model path: a causal GPT-2 gives the same logits with blocked and XLA attention."""
  from flax import nnx

  from normjax.models import MODELS

  model = MODELS.get("gpt2")(
    vocab_size=50, max_len=70, width=32, depth=2, num_heads=4, rngs=nnx.Rngs(0)
  )
  tokens = jax.random.randint(jax.random.key(3), (2, 70), 0, 50)
  monkeypatch.setenv(attn.ENV_VAR, "xla")
  xla = model(tokens)
  monkeypatch.setenv(attn.ENV_VAR, "blocked")
  blocked = model(tokens)
  np.testing.assert_allclose(blocked, xla, rtol=1e-4, atol=1e-4)
