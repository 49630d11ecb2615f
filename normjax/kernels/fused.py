"""LayerNorm / RMSNorm as ``jax.custom_vjp`` with a hand-fused backward.

One custom_vjp per norm, shared by every fast path: a ``NormKernels`` bundle
supplies the row-wise forward (which also returns the per-row statistics) and the
backward. This file holds that machinery and the XLA form used on CPU; the Pallas
bundle lives in ``pallas_norm.py``.

Forward residuals are only ``x``, ``scale`` and the float32 per-row ``mean`` and
``rstd = 1/sqrt(var + eps)`` (RMSNorm: ``rstd`` alone). With ``xhat = (x - mean) *
rstd``, ``g = dy * scale`` and D the feature size, the backward of LayerNorm is

  dx     = rstd * (g - mean_j(g) - xhat * mean_j(g * xhat))
  dscale = sum_rows(dy * xhat)
  dbias  = sum_rows(dy)

and of RMSNorm (``xhat = x * rstd``)

  dx     = rstd * (g - xhat * mean_j(g * xhat))
  dscale = sum_rows(dy * xhat)

(the standard result, e.g. Apex apex/normalization/csrc/layer_norm_cuda_kernel.cu,
jax-ml/jax:jax/experimental/pallas/ops/gpu/layer_norm.py).

The XLA form is tuned for XLA:CPU (jax 0.10; measurements in benchmarks.md):

* Inference forward: the centred form with ``keepdims`` statistics,
  ``(x - mean) * rstd * scale + bias``, which XLA:CPU compiles into one fusion
  (one read of x, one write of y), like flax.linen.LayerNorm.
* Training forward (also returns mean, rstd): ``y = x * (rstd scale) + (bias -
  mean rstd scale)`` after two-pass statistics; two reads of x, one write.
* Backward: the per-row and per-column sums as dots (matrix-vector products,
  which XLA:CPU runs at memory speed) with dx expanded into per-row coefficients

    dx = rstd * scale * dy + a * x + c,  a = -rstd^2 q,  c = rstd (rstd q mean - p)
    p  = mean_j(scale * dy),             q = rstd (mean_j(scale * dy * x) - mean p)
    dscale = rstd^T (dy * x) - (mean rstd)^T dy,   dbias = 1^T dy,

  evaluated in ``lax.scan`` steps over blocks of about ``BACKWARD_BLOCK_VALUES``
  values so that x, dy and the block's temporaries stay in cache; dscale/dbias
  accumulate in the scan carry. Blocking halves the backward's time
  and keeps XLA's temporary buffer small (on CPU every large buffer is
  page-faulted in afresh on each call).
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from normjax.kernels.reference import compute_dtype


class NormKernels(NamedTuple):
  """A forward/backward implementation of both norms on 2-D ``(rows, features)``.

  layer_norm_forward(x, scale, bias | None, epsilon) -> (y, mean, rstd)
  layer_norm_backward(x, scale, mean, rstd, dy, has_bias) -> (dx, dscale, dbias | None)
  rms_norm_forward(x, scale, epsilon) -> (y, rstd)
  rms_norm_backward(x, scale, rstd, dy) -> (dx, dscale)
  layer_norm_inference(x, scale, bias | None, epsilon) -> y   (optional)
  rms_norm_inference(x, scale, epsilon) -> y                  (optional)

  ``mean`` and ``rstd`` have the compute dtype (float32, or float64 for float64
  inputs) and shape ``(rows,)``; so do ``dscale``/``dbias`` (``(features,)``);
  ``y`` and ``dx`` have ``x.dtype``. The ``*_inference`` forms, used when no
  gradient is taken, default to the forward without its statistics.
  """

  name: str
  layer_norm_forward: Callable
  layer_norm_backward: Callable
  rms_norm_forward: Callable
  rms_norm_backward: Callable
  layer_norm_inference: Callable | None = None
  rms_norm_inference: Callable | None = None


# ----------------------------------------------------------------------------
# custom_vjp wrappers (2-D inputs; the public functions flatten leading axes)
# ----------------------------------------------------------------------------
@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def layer_norm_2d(x, scale, bias, epsilon: float, kernels: NormKernels, bias_dtype):
  """LayerNorm of 2-D ``x`` whose VJP is ``kernels.layer_norm_backward``.

  ``bias_dtype`` is ``None`` when ``bias`` is None, else ``bias.dtype`` (static:
  it fixes the structure and dtype of the bias cotangent).
  """
  del bias_dtype
  if kernels.layer_norm_inference is not None:
    return kernels.layer_norm_inference(x, scale, bias, epsilon)
  return kernels.layer_norm_forward(x, scale, bias, epsilon)[0]


def _layer_norm_fwd(x, scale, bias, epsilon, kernels, bias_dtype):
  del bias_dtype
  y, mean, rstd = kernels.layer_norm_forward(x, scale, bias, epsilon)
  return y, (x, scale, mean, rstd)


def _layer_norm_bwd(epsilon, kernels, bias_dtype, residuals, dy):
  del epsilon
  x, scale, mean, rstd = residuals
  dx, dscale, dbias = kernels.layer_norm_backward(x, scale, mean, rstd, dy, bias_dtype is not None)
  dx = dx.astype(x.dtype)
  dscale = dscale.astype(scale.dtype)
  dbias = None if bias_dtype is None else dbias.astype(bias_dtype)
  return dx, dscale, dbias


layer_norm_2d.defvjp(_layer_norm_fwd, _layer_norm_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def rms_norm_2d(x, scale, epsilon: float, kernels: NormKernels):
  """RMSNorm of 2-D ``x`` whose VJP is ``kernels.rms_norm_backward``."""
  if kernels.rms_norm_inference is not None:
    return kernels.rms_norm_inference(x, scale, epsilon)
  return kernels.rms_norm_forward(x, scale, epsilon)[0]


def _rms_norm_fwd(x, scale, epsilon, kernels):
  y, rstd = kernels.rms_norm_forward(x, scale, epsilon)
  return y, (x, scale, rstd)


def _rms_norm_bwd(epsilon, kernels, residuals, dy):
  del epsilon
  x, scale, rstd = residuals
  dx, dscale = kernels.rms_norm_backward(x, scale, rstd, dy)
  return dx.astype(x.dtype), dscale.astype(scale.dtype)


rms_norm_2d.defvjp(_rms_norm_fwd, _rms_norm_bwd)


# ----------------------------------------------------------------------------
# XLA form (CPU)
# ----------------------------------------------------------------------------
def _matvec(a, v):
  """``a @ v`` at full precision (a dot, which XLA:CPU runs fast)."""
  return jnp.matmul(a, v, precision=jax.lax.Precision.HIGHEST)


def _sum_over_rows(weights, a):
  """``weights @ a``, contracting the rows of ``a`` (a sum over rows as a dot).

  Under a mesh with Explicit axes the rows may be sharded, and jax then needs the
  output sharding spelled out: replicated, keeping ``a``'s feature sharding.
  """
  sharding = jax.typeof(a).sharding
  mesh = getattr(sharding, "mesh", None)
  if mesh is None or mesh.empty or jax.sharding.AxisType.Explicit not in mesh.axis_types:
    return _matvec(weights, a)
  features = sharding.spec[-1] if len(sharding.spec) == a.ndim else None
  out_spec = P(*([None] * (weights.ndim - 1)), features)
  return jnp.matmul(weights, a, precision=jax.lax.Precision.HIGHEST, out_sharding=out_spec)


# Values (rows x features) per lax.scan step of the backward on CPU; None: one pass
# over all rows. 32K float32 values = 128 KiB per array: x, dy and the step's
# temporaries fit the 1 MiB L2 cache. Measured in benchmarks.md.
BACKWARD_BLOCK_VALUES: int | None = 32 * 1024


def _row_block(x, block_values):
  """Rows per block (a divisor of the row count near block_values / features),
  or None to run unblocked.

  Unblocked under a mesh of several devices: a loop over row blocks would fight
  the row sharding.
  """
  n_rows, n_features = x.shape
  mesh = jax.sharding.get_abstract_mesh()
  if not block_values or (not mesh.empty and mesh.size > 1):
    return None
  target = max(1, block_values // n_features)
  if n_rows < 2 * target:
    return None
  for rows in range(target, max(1, target // 4) - 1, -1):
    if n_rows % rows == 0:
      return rows
  return None


def _over_row_blocks(fn, block, row_args, shared_args):
  """``fn(*row_args, *shared_args) -> (per_row, *column_sums)`` over row blocks.

  A ``lax.scan`` takes ``block`` rows per step; ``per_row`` is stitched back and
  the column sums are accumulated in the carry (stacking per-block partial sums
  instead would allocate blocks x features values: 128 MiB at 32768x4096).
  ``block=None`` runs ``fn`` once on all rows.
  """
  if block is None:
    return fn(*row_args, *shared_args)
  # Rows typed as sharded over a one-device mesh (Explicit axes): scan wants its
  # xs unsharded along the loop axis, and on one device resharding is free.
  row_spec = jax.typeof(row_args[0]).sharding.spec
  typed_sharded = any(axes is not None for axes in row_spec)
  if typed_sharded:
    row_args = [jax.sharding.reshard(a, P()) for a in row_args]
  n_blocks = row_args[0].shape[0] // block
  blocked = [a.reshape((n_blocks, block) + a.shape[1:]) for a in row_args]
  _, *sums_shape = jax.eval_shape(lambda *rows: fn(*rows, *shared_args), *(a[0] for a in blocked))
  zeros = [None if s is None else jnp.zeros(s.shape, s.dtype) for s in sums_shape]

  def step(sums, rows):
    per_row, *block_sums = fn(*rows, *shared_args)
    return [None if s is None else s + b for s, b in zip(sums, block_sums)], per_row

  sums, per_row = jax.lax.scan(step, zeros, blocked)
  per_row = per_row.reshape((-1,) + per_row.shape[2:])
  if typed_sharded:
    per_row = jax.sharding.reshard(per_row, row_spec)
  return (per_row, *sums)


def layer_norm_inference_xla(x, scale, bias, epsilon):
  """One fusion: keepdims two-pass statistics and the centred form."""
  ct = compute_dtype(x.dtype)
  xf = x.astype(ct)
  centred = xf - jnp.mean(xf, axis=-1, keepdims=True)
  rstd = jax.lax.rsqrt(jnp.mean(centred * centred, axis=-1, keepdims=True) + epsilon)
  y = centred * rstd * scale.astype(ct)
  if bias is not None:
    y = y + bias.astype(ct)
  return y.astype(x.dtype)


def layer_norm_forward_xla(x, scale, bias, epsilon):
  """Two-pass statistics, then ``y = x * (rstd scale) + (bias - mean rstd scale)``."""
  ct = compute_dtype(x.dtype)
  xf = x.astype(ct)
  scale = scale.astype(ct)
  mean = jnp.mean(xf, axis=-1)
  rstd = jax.lax.rsqrt(jnp.mean(jnp.square(xf - mean[:, None]), axis=-1) + epsilon)
  shift = -(mean * rstd)[:, None] * scale
  if bias is not None:
    shift = shift + bias.astype(ct)
  y = xf * rstd[:, None] * scale + shift
  return y.astype(x.dtype), mean, rstd


def _layer_norm_backward_rows(x, mean, rstd, dy, scale, has_bias):
  n_features = x.shape[-1]
  ct = compute_dtype(x.dtype)
  xf = x.astype(ct)
  dyf = dy.astype(ct)
  scale = scale.astype(ct)
  dy_x = dyf * xf
  p = _matvec(dyf, scale) / n_features
  q = rstd * (_matvec(dy_x, scale) / n_features - mean * p)
  a = -rstd * rstd * q
  c = rstd * (rstd * q * mean - p)
  dx = rstd[:, None] * dyf * scale + a[:, None] * xf + c[:, None]
  # One (2, rows) @ (rows, features) dot gives both dy-weighted column sums.
  weights = jnp.stack([-(mean * rstd), jnp.ones_like(rstd)])
  column_sums = _sum_over_rows(weights, dyf)
  dscale = _sum_over_rows(rstd, dy_x) + column_sums[0]
  dbias = column_sums[1] if has_bias else None
  return dx.astype(x.dtype), dscale, dbias


def layer_norm_backward_xla(x, scale, mean, rstd, dy, has_bias, block_values=BACKWARD_BLOCK_VALUES):
  """dx, dscale, dbias from per-row and per-column dots (see module docstring)."""
  fn = lambda x, mean, rstd, dy, scale: _layer_norm_backward_rows(
    x, mean, rstd, dy, scale, has_bias
  )
  return _over_row_blocks(fn, _row_block(x, block_values), [x, mean, rstd, dy], [scale])


def rms_norm_inference_xla(x, scale, epsilon):
  """One fusion: ``x * rsqrt(mean(x^2) + eps) * scale`` with keepdims."""
  ct = compute_dtype(x.dtype)
  xf = x.astype(ct)
  rstd = jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + epsilon)
  return (xf * rstd * scale.astype(ct)).astype(x.dtype)


def rms_norm_forward_xla(x, scale, epsilon):
  ct = compute_dtype(x.dtype)
  xf = x.astype(ct)
  rstd = jax.lax.rsqrt(jnp.mean(jnp.square(xf), axis=-1) + epsilon)
  y = xf * rstd[:, None] * scale.astype(ct)
  return y.astype(x.dtype), rstd


def _rms_norm_backward_rows(x, rstd, dy, scale):
  n_features = x.shape[-1]
  ct = compute_dtype(x.dtype)
  xf = x.astype(ct)
  dyf = dy.astype(ct)
  scale = scale.astype(ct)
  dy_x = dyf * xf
  q = rstd * rstd * rstd * _matvec(dy_x, scale) / n_features
  dx = rstd[:, None] * dyf * scale - q[:, None] * xf
  return dx.astype(x.dtype), _sum_over_rows(rstd, dy_x)


def rms_norm_backward_xla(x, scale, rstd, dy, block_values=BACKWARD_BLOCK_VALUES):
  """dx = rstd * scale * dy - rstd^3 mean_j(scale dy x) x; dscale = rstd^T (dy x)."""
  return _over_row_blocks(
    _rms_norm_backward_rows, _row_block(x, block_values), [x, rstd, dy], [scale]
  )


@functools.lru_cache(maxsize=None)
def xla_kernels(backward_block_values: int | None = BACKWARD_BLOCK_VALUES) -> NormKernels:
  """The XLA ``NormKernels``, backward in row blocks of about this many values."""
  blocks = dict(block_values=backward_block_values)
  return NormKernels(
    name=f"fused[backward blocks of {backward_block_values} values]",
    layer_norm_forward=layer_norm_forward_xla,
    layer_norm_backward=functools.partial(layer_norm_backward_xla, **blocks),
    rms_norm_forward=rms_norm_forward_xla,
    rms_norm_backward=functools.partial(rms_norm_backward_xla, **blocks),
    layer_norm_inference=layer_norm_inference_xla,
    rms_norm_inference=rms_norm_inference_xla,
  )


XLA_KERNELS = xla_kernels()


def layer_norm(x, scale, bias=None, *, epsilon=1e-6, kernels: NormKernels = XLA_KERNELS):
  """LayerNorm over the last axis of ``x`` through the custom_vjp of ``kernels``."""
  shape = x.shape
  x2d = x.reshape(-1, shape[-1])
  bias_dtype = None if bias is None else np.dtype(bias.dtype)
  y = layer_norm_2d(x2d, scale, bias, float(epsilon), kernels, bias_dtype)
  return y.reshape(shape)


def rms_norm(x, scale, *, epsilon=1e-6, kernels: NormKernels = XLA_KERNELS):
  """RMSNorm over the last axis of ``x`` through the custom_vjp of ``kernels``."""
  shape = x.shape
  y = rms_norm_2d(x.reshape(-1, shape[-1]), scale, float(epsilon), kernels)
  return y.reshape(shape)
