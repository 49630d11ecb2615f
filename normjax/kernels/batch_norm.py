"""Training-mode BatchNorm as a ``jax.custom_vjp`` with a hand-fused backward (XLA:CPU).

    y, mean, var = batch_norm_train(x, scale, bias, epsilon)   # over every axis but the last

With x viewed as (M, C) (M = every sample and position), per channel: ``mean = 1^T x / M``,
``var = 1^T (x - mean)^2 / M`` (two-pass, population), ``rstd = 1/sqrt(var + eps)``,
``y = x * (scale rstd) + (bias - mean scale rstd)``. The backward of y (with ``xhat = (x - mean)
rstd``, ``a = scale rstd``) is the standard one,

  dbias  = 1^T dy,   dscale = rstd (1^T (dy * x) - mean dbias)
  dx     = a dy - x a rstd dscale / M + a (rstd mean dscale - dbias) / M,

plus the terms of the ``mean`` and ``var`` outputs' cotangents (``dmean / M`` and
``2 dvar (x - mean) / M``; zero when, as in ``normjax.norms.basic.batch_norm``, they only feed
the stop-gradient running statistics). The sums are column sums of the (M, C) view (XLA's
reduction, which is pairwise: a (1, M) @ (M, C) dot, as the LayerNorm kernels use for their
short rows, accumulated 100x more rounding error over M = 50176 rows), and dx is one
elementwise pass with per-channel coefficients, where the autodiff of the formula takes
several passes over x (measured: ``scripts/bench_norms.py --part conv``, benchmarks.md).
Statistics in float32 (float64 for float64), y and dx in x's dtype; the residuals are x, the
affine parameters and the per-channel mean and rstd.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from normjax.kernels.reference import compute_dtype


def _column_mean(a):
  return jnp.mean(a, axis=0)


def _forward(x, scale, bias, epsilon):
  ct = compute_dtype(x.dtype)
  x2 = x.reshape(-1, x.shape[-1]).astype(ct)
  mean = _column_mean(x2)
  var = _column_mean(jnp.square(x2 - mean))
  rstd = jax.lax.rsqrt(var + epsilon)
  a = scale.astype(ct) * rstd
  y = (x2 * a + (bias.astype(ct) - mean * a)).reshape(x.shape).astype(x.dtype)
  return y, mean, var, rstd


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def batch_norm_train(x, scale, bias, epsilon: float):
  """(y, mean, var): BatchNorm with batch statistics over every axis of x but the last."""
  y, mean, var, _ = _forward(x, scale, bias, epsilon)
  return y, mean, var


def _fwd(x, scale, bias, epsilon):
  y, mean, var, rstd = _forward(x, scale, bias, epsilon)
  return (y, mean, var), (x, scale, bias, mean, rstd)


def _bwd(epsilon, residuals, cotangents):
  del epsilon
  x, scale, bias, mean, rstd = residuals
  dy, dmean, dvar = cotangents
  ct = compute_dtype(x.dtype)
  x2 = x.reshape(-1, x.shape[-1]).astype(ct)
  dy2 = dy.reshape(x2.shape).astype(ct)
  m = x2.shape[0]
  dbias, dy_x = jnp.sum(dy2, axis=0), jnp.sum(dy2 * x2, axis=0)
  dscale = rstd * (dy_x - mean * dbias)
  a = scale.astype(ct) * rstd
  dmean, dvar = dmean.astype(ct), dvar.astype(ct)
  coef_x = -a * rstd * dscale / m + 2 * dvar / m
  shift = a * (rstd * mean * dscale - dbias) / m + dmean / m - 2 * dvar * mean / m
  dx = (dy2 * a + x2 * coef_x + shift).reshape(x.shape).astype(x.dtype)
  return dx, dscale.astype(scale.dtype), dbias.astype(bias.dtype)


batch_norm_train.defvjp(_fwd, _bwd)
