"""Scaled dot-product attention with an implementation chosen per backend.

    from normjax.kernels import attention
    out = attention.attention(q, k, v, is_causal=True)      # (B, T, H, D) -> (B, T, H, D)

``out = softmax(q k^T / sqrt(D) + mask) v`` per head; ``mask`` is a bool array broadcastable
to (B, H, Tq, Tk), True where a query may attend; ``is_causal`` also allows only keys at or
before the query's position (self-attention, Tq == Tk). Scores and softmax are float32 for
bf16 / f16 / f32 inputs (float64 for float64), the probabilities are cast back to the input
dtype before the second product, and a fully masked row attends uniformly (its scores are
the dtype's minimum), all as ``jax.nn.dot_product_attention`` does.

Implementations (``IMPLEMENTATIONS``):

* ``"xla"``: ``jax.nn.dot_product_attention(implementation="xla")``.
* ``"cudnn"``: ``jax.nn.dot_product_attention(implementation="cudnn")``, cuDNN's fused flash
  attention (NVIDIA GPUs, bf16 / f16 only).
* ``"jax"``: ``jax.nn.dot_product_attention`` with jax's own choice (cuDNN where it
  applies, else XLA).
* ``"blocked"``: written here for XLA:CPU. Heads-major layout (one transpose of q, k, v to
  (B, H, T, D), so both products are plain batched matmuls), and for causal attention the
  queries split into ``CAUSAL_BLOCKS`` row blocks (the last one ragged), block i attending
  only keys ``[0, end_i)``: the key blocks above the diagonal, which the mask would zero,
  are never computed (about (n+1)/2n of the full products' FLOPs, 56 % at n = 8).
  Autodiff of this form is the backward, which skips the same blocks. The idea is flash
  attention's causal block skipping (Dao et al. 2022, arXiv 2205.14135) without its online
  softmax: each query block's scores fit the cache.
* ``"reference"``: the plain einsum formula (tests).
* ``"auto"`` (default): ``"blocked"`` on CPU, ``"jax"`` elsewhere.

Choosing one, first match wins: the ``implementation=`` argument, the environment variable
``NORMJAX_ATTENTION``, then ``"auto"``; the choice is made when the function is traced.
Measured (fwd+bwd against XLA's and torch's ``scaled_dot_product_attention``): benchmarks.md,
``scripts/bench_attention.py``.
"""

from __future__ import annotations

import math
import os

import jax
import jax.numpy as jnp

IMPLEMENTATIONS = ("auto", "xla", "cudnn", "jax", "blocked", "reference")
ENV_VAR = "NORMJAX_ATTENTION"
# Query blocks of causal "blocked" attention: ~8 was fastest at T = 256 and T = 1024 on
# XLA:CPU (benchmarks.md); blocks are never shorter than MIN_BLOCK rows.
CAUSAL_BLOCKS = 8
MIN_BLOCK = 16


def resolve(implementation: str | None = None) -> str:
  """The implementation ``attention`` uses: argument, then ``NORMJAX_ATTENTION``, then auto."""
  name = implementation or os.environ.get(ENV_VAR, "").strip().lower() or "auto"
  if name not in IMPLEMENTATIONS:
    where = "implementation" if implementation else ENV_VAR
    raise ValueError(
      f"{where}={name!r}: unknown attention implementation; expected one of "
      f"{', '.join(IMPLEMENTATIONS)}"
    )
  if name == "auto":
    return "blocked" if jax.default_backend() == "cpu" else "jax"
  return name


def _wide(dtype):
  return jnp.promote_types(dtype, jnp.float32)


def _allowed(mask, is_causal, q_rows: slice, n_keys: int, shape):
  """Bool (…, rows, n_keys) of the causal and given masks for query rows ``q_rows``."""
  allowed = None
  if is_causal:
    rows = jnp.arange(q_rows.start, q_rows.stop)[:, None]
    allowed = rows >= jnp.arange(n_keys)[None, :]
  if mask is not None:
    mask = jnp.broadcast_to(jnp.asarray(mask, bool), (*mask.shape[:-2], *shape[-2:]))
    part = mask[..., q_rows, :n_keys]
    allowed = part if allowed is None else allowed & part
  return allowed


def _softmax_product(q, k, v, allowed):
  """softmax(q k^T / sqrt(D) [masked]) v on heads-major (B, H, t, D) blocks, scores in
  float32+ and scaled after the product (as jax and ``cached_attention`` do)."""
  wide = _wide(q.dtype)
  scores = jnp.einsum("bhqd,bhkd->bhqk", q, k, preferred_element_type=wide)
  scores = scores * jnp.asarray(1.0 / math.sqrt(q.shape[-1]), wide)
  if allowed is not None:
    scores = jnp.where(allowed, scores, jnp.finfo(wide).min)
  probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
  return jnp.einsum("bhqk,bhkd->bhqd", probs, v)


def blocked_attention(query, key, value, *, mask=None, is_causal: bool = False, blocks=None):
  """The ``"blocked"`` implementation (see the module docstring); (B, T, H, D) layout."""
  t_q, t_k = query.shape[1], key.shape[1]
  if is_causal and t_q != t_k:
    raise ValueError(f"is_causal needs as many queries as keys, got {t_q} and {t_k}")
  heads_major = lambda x: jnp.swapaxes(x, 1, 2)
  q, k, v = heads_major(query), heads_major(key), heads_major(value)
  full = (query.shape[0], query.shape[2], t_q, t_k)
  n = blocks or CAUSAL_BLOCKS
  # One block under a mask: a query row that the mask leaves no key attends uniformly over
  # all keys (as in jax); a block that stops at the diagonal would change that row.
  size = max(MIN_BLOCK, -(-t_q // n)) if is_causal and mask is None else t_q
  outs = []
  for start in range(0, t_q, size):
    rows = slice(start, min(start + size, t_q))
    n_keys = rows.stop if is_causal else t_k
    allowed = _allowed(mask, is_causal, rows, n_keys, full)
    outs.append(_softmax_product(q[:, :, rows], k[:, :, :n_keys], v[:, :, :n_keys], allowed))
  out = outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=2)
  return heads_major(out)


def reference_attention(query, key, value, *, mask=None, is_causal: bool = False):
  """The formula as one einsum softmax over all keys (the test reference)."""
  wide = _wide(query.dtype)
  scores = jnp.einsum("bqhd,bkhd->bhqk", query, key, preferred_element_type=wide)
  scores = scores / jnp.sqrt(jnp.asarray(query.shape[-1], wide))
  full = (query.shape[0], query.shape[2], query.shape[1], key.shape[1])
  allowed = _allowed(mask, is_causal, slice(0, query.shape[1]), key.shape[1], full)
  if allowed is not None:
    scores = jnp.where(allowed, scores, jnp.finfo(wide).min)
  probs = jax.nn.softmax(scores, axis=-1).astype(value.dtype)
  return jnp.einsum("bhqk,bkhd->bqhd", probs, value)


def attention(query, key, value, *, mask=None, is_causal: bool = False, implementation=None):
  """Multi-head attention, (B, Tq, H, D) x (B, Tk, H, D) -> (B, Tq, H, D)."""
  name = resolve(implementation)
  if query.dtype == jnp.float64 and name in ("xla", "jax", "cudnn"):
    name = "reference"  # jax's XLA attention computes float64 scores in float32
  if name == "blocked":
    return blocked_attention(query, key, value, mask=mask, is_causal=is_causal)
  if name == "reference":
    return reference_attention(query, key, value, mask=mask, is_causal=is_causal)
  jax_impl = None if name == "jax" else name
  return jax.nn.dot_product_attention(
    query, key, value, mask=mask, is_causal=is_causal, implementation=jax_impl
  )
