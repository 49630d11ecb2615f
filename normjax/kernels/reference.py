"""Plain jnp LayerNorm and RMSNorm: the oracle every fast path is tested against.

Both normalise over the last axis of ``x`` (any leading shape) with statistics in
float32 whatever the input dtype, and return ``x.dtype``:

  LayerNorm (Ba et al., 2016, arXiv:1607.06450):
    mean = (1/D) sum_j x_j,   var = (1/D) sum_j (x_j - mean)^2
    y    = (x - mean) * rsqrt(var + eps) * scale + bias

  RMSNorm (Zhang & Sennrich, 2019, arXiv:1910.07467):
    ms = (1/D) sum_j x_j^2
    y  = x * rsqrt(ms + eps) * scale

Float64 inputs keep float64 statistics (``compute_dtype``).

The variance is the two-pass ``mean((x - mean)^2)``, not ``E[x^2] - mean^2``
(flax.linen.LayerNorm's default ``use_fast_variance=True``), which loses all
precision when |mean| >> std. ``epsilon`` sits inside the square root, as in
flax (google/flax:flax/linen/normalization.py) and torch.

Gradients of these functions come from plain autodiff; this is the
``implementation='reference'`` path of ``normjax.kernels``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def compute_dtype(dtype) -> jnp.dtype:
  """float32 for bf16/f16/f32 inputs, float64 for float64 ones."""
  return jnp.promote_types(dtype, jnp.float32)


def layer_norm_statistics(x: jax.Array, epsilon: float) -> tuple[jax.Array, jax.Array]:
  """Per-row mean and reciprocal std (float32, shape ``x.shape[:-1]``)."""
  x = x.astype(compute_dtype(x.dtype))
  mean = jnp.mean(x, axis=-1)
  var = jnp.mean(jnp.square(x - mean[..., None]), axis=-1)
  return mean, jax.lax.rsqrt(var + epsilon)


def rms_norm_statistics(x: jax.Array, epsilon: float) -> jax.Array:
  """Per-row reciprocal root mean square (float32, shape ``x.shape[:-1]``)."""
  x = x.astype(compute_dtype(x.dtype))
  return jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1) + epsilon)


def layer_norm(
  x: jax.Array, scale: jax.Array, bias: jax.Array | None = None, *, epsilon: float = 1e-6
) -> jax.Array:
  """LayerNorm over the last axis, differentiated by plain autodiff."""
  dtype = compute_dtype(x.dtype)
  mean, rstd = layer_norm_statistics(x, epsilon)
  y = (x.astype(dtype) - mean[..., None]) * rstd[..., None] * scale.astype(dtype)
  if bias is not None:
    y = y + bias.astype(dtype)
  return y.astype(x.dtype)


def rms_norm(x: jax.Array, scale: jax.Array, *, epsilon: float = 1e-6) -> jax.Array:
  """RMSNorm over the last axis, differentiated by plain autodiff."""
  rstd = rms_norm_statistics(x, epsilon)
  dtype = compute_dtype(x.dtype)
  y = x.astype(dtype) * rstd[..., None] * scale.astype(dtype)
  return y.astype(x.dtype)
