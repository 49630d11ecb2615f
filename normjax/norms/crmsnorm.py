"""Compressed RMSNorm (Jiang, Gu, Zhu, Pan; NeurIPS 2023, "Pre-RMSNorm and Pre-CRMSNorm
Transformers: Equivalent and Efficient Pre-LN Transformers"), ZixuanJiang/pre-rmsnorm-transformer.

A zero-mean vector x in R^d is stored losslessly as its first d-1 coordinates x'
(x_d = -sum_i x'_i). CRMSNorm normalizes the stored vector as RMSNorm would the full one:

    CRMSNorm(x') = x' / sqrt((sum_i x'_i^2 + (sum_i x'_i)^2) / d + eps) * scale

so CRMSNorm(x') equals the first d-1 coordinates of RMSNorm(x) = LayerNorm(x) for zero-mean x.
``num_features`` is the STORED width d-1 (a model with a compressed residual stream builds its
norms on width-1 channels; see ``compressed_residual``). The paper's norm has no affine (LN's
scale and bias are folded into the following linear layer, ``surgery/conversions.py``);
here ``scale`` (init 1, on the d-1 stored coordinates) is kept as in RMSNorm and can be turned
off with ``use_scale=False``. Statistics in float32 or wider, output in ``x.dtype``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from normjax.norms import register
from normjax.norms.base import AffineNorm, apply_affine, check_positive, stats_dtype


def crms_norm(x, params, state=None, *, train=False, mask=None, epsilon=1e-6):
  """CRMSNorm over the last axis of ``x`` (``d - 1`` stored coordinates of a zero-mean vector)."""
  del train, mask  # per-token statistics
  h = x.astype(stats_dtype(x))
  d = x.shape[-1] + 1
  mean_square = (
    jnp.sum(jnp.square(h), -1, keepdims=True) + jnp.square(jnp.sum(h, -1, keepdims=True))
  ) / d
  y = h * jax.lax.rsqrt(mean_square + epsilon)
  return apply_affine(y, params).astype(x.dtype), state


def compress(x):
  """The first d-1 coordinates of ``x`` (lossless when ``x`` is zero-mean)."""
  return x[..., :-1]


def decompress(x):
  """The zero-mean d-vector whose first d-1 coordinates are ``x``: append -sum(x)."""
  return jnp.concatenate([x, -jnp.sum(x, -1, keepdims=True)], axis=-1)


@register("crmsnorm")
class CRMSNorm(AffineNorm):
  """CRMSNorm module (``crms_norm``) on ``num_features = d - 1`` stored coordinates.

  The class attribute ``compressed_residual`` tells the transformer models to keep their
  residual stream at width - 1 coordinates (writers drop their last output, readers see d-1).
  """

  compressed_residual = True

  def __init__(
    self,
    num_features: int,
    *,
    epsilon: float = 1e-6,
    use_scale: bool = True,
    rngs: nnx.Rngs | None = None,
  ):
    del rngs
    check_positive("epsilon", epsilon)
    if num_features < 1:
      raise ValueError(f"crmsnorm num_features={num_features!r}: must be >= 1 (it is d - 1)")
    super().__init__(num_features, use_scale=use_scale, use_bias=False)
    self.epsilon = epsilon

  def __call__(self, x, mask=None):
    self._check_features(x)
    return crms_norm(x, self.params(), epsilon=self.epsilon)[0]


__all__ = ["crms_norm", "compress", "decompress", "CRMSNorm"]
