"""Pallas LayerNorm / RMSNorm kernels (GPU via Triton, TPU via Mosaic, CPU via interpret).

Row-blocked grid: program ``i`` owns rows ``[i*bm, (i+1)*bm)`` and the whole feature
axis, so every row statistic is a reduction inside one program (one HBM read of
``x``; tokamax openxla/tokamax:tokamax/_src/ops/normalization/pallas_triton.py
blocks the same way). The last block may be ragged. The backward writes ``dx``
and per-block partial ``dscale``/``dbias`` rows, summed by XLA afterwards (no
atomics; same scheme as tokamax's VJP kernel and Liger's RMSNorm backward).
Formulas: see ``fused.py``; the custom_vjp is the one defined there.

Two memory-access flavours, both testable with ``interpret=True`` on CPU:

* ``"masked"`` (Triton): Triton wants power-of-two block sizes, so a block spans
  ``next_pow2(D)`` columns and ``bm`` rows; loads/stores past the array are masked
  with ``jax.experimental.pallas.triton.load/store`` (jax#19222). Selected with
  ``compiler_params=pltriton.CompilerParams`` because Mosaic GPU is the default
  GPU lowering since jax 0.9.
* ``"blocked"`` (TPU, interpret): blocks span exactly ``D`` columns (a full
  dimension is always a legal TPU block) and ``bm`` rows, a multiple of 8. Reads
  of the ragged last block's missing rows are undefined (NaN in interpret mode),
  writes there are dropped; they are zeroed before any sum across rows.

Kernels are plain jnp on refs (the portable subset); only the masked loads/stores
are Triton-specific. Under a mesh set with ``jax.set_mesh`` the call runs per
shard of the leading axis in ``jax.shard_map`` (a pallas_call is opaque to the
SPMD partitioner); features must not be sharded.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.sharding import PartitionSpec as P

from normjax.kernels import fused
from normjax.kernels.reference import compute_dtype

FLAVORS = ("masked", "blocked")
MAX_MASKED_WIDTH = 16384  # whole padded row in registers; wider rows: use 'fused'.


def _next_pow2(n: int) -> int:
  return 1 << (int(n) - 1).bit_length()


def _prev_pow2(n: int) -> int:
  return 1 << (max(int(n), 1).bit_length() - 1)


def default_flavor(platform: str) -> str:
  return "masked" if platform == "gpu" else "blocked"


def default_block_rows(n_rows: int, n_features: int, flavor: str, itemsize: int = 4) -> int:
  """Rows per program: ~8K values per array on GPU (registers), ~256K on TPU (VMEM).

  TPU blocks need a multiple of 8 rows for 32-bit data (16 for 16-bit) unless
  they span all rows.
  """
  if flavor == "masked":
    width = _next_pow2(n_features)
    return max(1, min(64, 8192 // width, _next_pow2(n_rows)))
  min_rows = max(8, 32 // itemsize)
  rows = max(min_rows, min(1024, _prev_pow2((1 << 18) // max(n_features, 1))))
  return n_rows if n_rows <= rows else rows


# ----------------------------------------------------------------------------
# memory access: masked (Triton) or plain blocked refs
# ----------------------------------------------------------------------------
class Geometry(NamedTuple):
  """Static shape of a launch: ``block_rows`` x ``width`` blocks over the array."""

  flavor: str
  block_rows: int
  width: int
  n_rows: int
  n_features: int
  dtype: jnp.dtype  # compute dtype of the statistics


class _Block:
  """Masks and loads/stores for one row block of width ``width``."""

  def __init__(self, flavor, block_rows, width, n_rows, n_features, dtype):
    self.masked = flavor == "masked"
    self.dtype = dtype
    first_row = pl.program_id(0) * block_rows
    rows = first_row + jax.lax.broadcasted_iota(jnp.int32, (block_rows, 1), 0)
    self.rows = rows < n_rows
    self.cols = None
    if width != n_features:
      self.cols = jax.lax.broadcasted_iota(jnp.int32, (1, width), 1) < n_features
    self.both = self.rows if self.cols is None else self.rows & self.cols

  def load(self, ref, mask):
    """Values of ``ref`` in the compute dtype, zero where ``mask`` is False."""
    if mask is None:
      return ref[...].astype(self.dtype)
    if self.masked:
      from jax.experimental.pallas import triton as pltriton

      return pltriton.load(ref, mask=mask, other=0).astype(self.dtype)
    return jnp.where(mask, ref[...].astype(self.dtype), 0.0)

  def store(self, ref, value, mask):
    value = value.astype(ref.dtype)
    if self.masked and mask is not None:
      from jax.experimental.pallas import triton as pltriton

      pltriton.store(ref, value, mask=mask)
    else:
      ref[...] = value

  def zero_padding(self, value):
    return value if self.cols is None else jnp.where(self.cols, value, 0.0)


# ----------------------------------------------------------------------------
# kernels
# ----------------------------------------------------------------------------
def _layer_norm_fwd_kernel(*refs, has_bias, epsilon, geometry):
  if has_bias:
    x_ref, scale_ref, bias_ref, y_ref, mean_ref, rstd_ref = refs
  else:
    (x_ref, scale_ref, y_ref, mean_ref, rstd_ref), bias_ref = refs, None
  block = _Block(*geometry)
  n_features = geometry.n_features
  x = block.load(x_ref, block.both)
  mean = jnp.sum(x, axis=1, keepdims=True) / n_features
  centred = block.zero_padding(x - mean)
  var = jnp.sum(centred * centred, axis=1, keepdims=True) / n_features
  rstd = jax.lax.rsqrt(var + epsilon)
  y = centred * rstd * block.load(scale_ref, block.cols)
  if bias_ref is not None:
    y = y + block.load(bias_ref, block.cols)
  block.store(y_ref, y, block.both)
  block.store(mean_ref, mean, block.rows)
  block.store(rstd_ref, rstd, block.rows)


def _layer_norm_bwd_kernel(*refs, has_bias, geometry):
  if has_bias:
    x_ref, scale_ref, mean_ref, rstd_ref, dy_ref, dx_ref, dscale_ref, dbias_ref = refs
  else:
    (x_ref, scale_ref, mean_ref, rstd_ref, dy_ref, dx_ref, dscale_ref), dbias_ref = refs, None
  block = _Block(*geometry)
  n_features = geometry.n_features
  x = block.load(x_ref, block.both)
  dy = block.load(dy_ref, block.both)
  mean = block.load(mean_ref, block.rows)
  rstd = block.load(rstd_ref, block.rows)
  xhat = block.zero_padding((x - mean) * rstd)
  g = dy * block.load(scale_ref, block.cols)
  mean_g = jnp.sum(g, axis=1, keepdims=True) / n_features
  mean_gx = jnp.sum(g * xhat, axis=1, keepdims=True) / n_features
  block.store(dx_ref, rstd * (g - mean_g - xhat * mean_gx), block.both)
  block.store(dscale_ref, jnp.sum(dy * xhat, axis=0, keepdims=True), None)
  if dbias_ref is not None:
    block.store(dbias_ref, jnp.sum(dy, axis=0, keepdims=True), None)


def _rms_norm_fwd_kernel(x_ref, scale_ref, y_ref, rstd_ref, *, epsilon, geometry):
  block = _Block(*geometry)
  x = block.load(x_ref, block.both)
  rstd = jax.lax.rsqrt(jnp.sum(x * x, axis=1, keepdims=True) / geometry.n_features + epsilon)
  block.store(y_ref, x * rstd * block.load(scale_ref, block.cols), block.both)
  block.store(rstd_ref, rstd, block.rows)


def _rms_norm_bwd_kernel(x_ref, scale_ref, rstd_ref, dy_ref, dx_ref, dscale_ref, *, geometry):
  block = _Block(*geometry)
  x = block.load(x_ref, block.both)
  dy = block.load(dy_ref, block.both)
  rstd = block.load(rstd_ref, block.rows)
  xhat = x * rstd
  g = dy * block.load(scale_ref, block.cols)
  mean_gx = jnp.sum(g * xhat, axis=1, keepdims=True) / geometry.n_features
  block.store(dx_ref, rstd * (g - xhat * mean_gx), block.both)
  block.store(dscale_ref, jnp.sum(dy * xhat, axis=0, keepdims=True), None)


# ----------------------------------------------------------------------------
# pallas_call plumbing
# ----------------------------------------------------------------------------
class PallasConfig:
  """Static launch settings; hashable so it can ride in the custom_vjp."""

  def __init__(self, flavor="blocked", block_rows=None, interpret=False):
    if flavor not in FLAVORS:
      raise ValueError(f"flavor={flavor!r}: expected one of {FLAVORS}")
    if block_rows is not None and (int(block_rows) != block_rows or block_rows < 1):
      raise ValueError(f"block_rows={block_rows!r}: expected a positive integer or None")
    if flavor == "masked" and block_rows is not None and block_rows != _next_pow2(block_rows):
      raise ValueError(
        f"block_rows={block_rows}: the 'masked' (Triton) flavour needs a power of two"
      )
    self.flavor, self.block_rows, self.interpret = flavor, block_rows, bool(interpret)

  def _key(self):
    return (self.flavor, self.block_rows, self.interpret)

  def __hash__(self):
    return hash(self._key())

  def __eq__(self, other):
    return isinstance(other, PallasConfig) and self._key() == other._key()

  def __repr__(self):
    return "PallasConfig(flavor=%r, block_rows=%r, interpret=%r)" % self._key()

  def geometry(self, x):
    """Rows per block, block width, and the static arguments of ``_Block``."""
    n_rows, n_features = x.shape
    block_rows = self.block_rows or default_block_rows(
      n_rows, n_features, self.flavor, jnp.dtype(x.dtype).itemsize
    )
    width = _next_pow2(n_features) if self.flavor == "masked" else n_features
    dtype = compute_dtype(x.dtype)
    return block_rows, width, Geometry(self.flavor, block_rows, width, n_rows, n_features, dtype)

  def call(self, kernel, grid, in_specs, out_specs, out_shape, block_rows, width):
    compiler_params = None
    if not self.interpret and self.flavor == "masked":
      from jax.experimental.pallas import triton as pltriton

      warps = 4 if block_rows * width <= 4096 else (8 if block_rows * width <= 8192 else 16)
      compiler_params = pltriton.CompilerParams(num_warps=warps, num_stages=1)
    elif not self.interpret and jax.default_backend() == "tpu":
      from jax.experimental.pallas import tpu as pltpu

      compiler_params = pltpu.CompilerParams(dimension_semantics=("parallel",))
    return pl.pallas_call(
      kernel,
      out_shape=out_shape,
      grid=grid,
      in_specs=in_specs,
      out_specs=out_specs,
      interpret=self.interpret,
      compiler_params=compiler_params,
    )


def _specs(block_rows, width):
  rows = pl.BlockSpec((block_rows, width), lambda i: (i, 0))
  stat = pl.BlockSpec((block_rows, 1), lambda i: (i, 0))
  vector = pl.BlockSpec((1, width), lambda i: (0, 0))
  partial = pl.BlockSpec((None, 1, width), lambda i: (i, 0, 0))
  return rows, stat, vector, partial


def _sum_partials(partials, n_features):
  return jnp.sum(partials[:, 0, :n_features], axis=0)


def _layer_norm_forward(config, x, scale, bias, epsilon):
  n_rows, n_features = x.shape
  block_rows, width, geometry = config.geometry(x)
  rows, stat, vector, _ = _specs(block_rows, width)
  has_bias = bias is not None
  operands = [x, scale.reshape(1, -1)] + ([bias.reshape(1, -1)] if has_bias else [])
  kernel = functools.partial(
    _layer_norm_fwd_kernel, has_bias=has_bias, epsilon=float(epsilon), geometry=geometry
  )
  stat_shape = jax.ShapeDtypeStruct((n_rows, 1), geometry.dtype)
  y, mean, rstd = config.call(
    kernel,
    (pl.cdiv(n_rows, block_rows),),
    [rows, vector] + [vector] * has_bias,
    [rows, stat, stat],
    [jax.ShapeDtypeStruct(x.shape, x.dtype), stat_shape, stat_shape],
    block_rows,
    width,
  )(*operands)
  return y, mean[:, 0], rstd[:, 0]


def _layer_norm_backward(config, x, scale, mean, rstd, dy, has_bias):
  n_rows, n_features = x.shape
  block_rows, width, geometry = config.geometry(x)
  rows, stat, vector, partial = _specs(block_rows, width)
  grid = pl.cdiv(n_rows, block_rows)
  partial_shape = jax.ShapeDtypeStruct((grid, 1, width), geometry.dtype)
  kernel = functools.partial(_layer_norm_bwd_kernel, has_bias=has_bias, geometry=geometry)
  outs = config.call(
    kernel,
    (grid,),
    [rows, vector, stat, stat, rows],
    [rows, partial] + [partial] * has_bias,
    [jax.ShapeDtypeStruct(x.shape, x.dtype), partial_shape] + [partial_shape] * has_bias,
    block_rows,
    width,
  )(x, scale.reshape(1, -1), mean[:, None], rstd[:, None], dy)
  dbias = _sum_partials(outs[2], n_features) if has_bias else None
  return outs[0], _sum_partials(outs[1], n_features), dbias


def _rms_norm_forward(config, x, scale, epsilon):
  n_rows, n_features = x.shape
  block_rows, width, geometry = config.geometry(x)
  rows, stat, vector, _ = _specs(block_rows, width)
  kernel = functools.partial(_rms_norm_fwd_kernel, epsilon=float(epsilon), geometry=geometry)
  y, rstd = config.call(
    kernel,
    (pl.cdiv(n_rows, block_rows),),
    [rows, vector],
    [rows, stat],
    [jax.ShapeDtypeStruct(x.shape, x.dtype), jax.ShapeDtypeStruct((n_rows, 1), geometry.dtype)],
    block_rows,
    width,
  )(x, scale.reshape(1, -1))
  return y, rstd[:, 0]


def _rms_norm_backward(config, x, scale, rstd, dy):
  n_rows, n_features = x.shape
  block_rows, width, geometry = config.geometry(x)
  rows, stat, vector, partial = _specs(block_rows, width)
  grid = pl.cdiv(n_rows, block_rows)
  kernel = functools.partial(_rms_norm_bwd_kernel, geometry=geometry)
  dx, dscale = config.call(
    kernel,
    (grid,),
    [rows, vector, stat, rows],
    [rows, partial],
    [
      jax.ShapeDtypeStruct(x.shape, x.dtype),
      jax.ShapeDtypeStruct((grid, 1, width), geometry.dtype),
    ],
    block_rows,
    width,
  )(x, scale.reshape(1, -1), rstd[:, None], dy)
  return dx, _sum_partials(dscale, n_features)


@functools.lru_cache(maxsize=None)
def pallas_kernels(config: PallasConfig) -> fused.NormKernels:
  """The ``NormKernels`` bundle for one launch configuration."""
  return fused.NormKernels(
    name=f"pallas[{config.flavor}{', interpret' if config.interpret else ''}]",
    layer_norm_forward=functools.partial(_layer_norm_forward, config),
    layer_norm_backward=functools.partial(_layer_norm_backward, config),
    rms_norm_forward=functools.partial(_rms_norm_forward, config),
    rms_norm_backward=functools.partial(_rms_norm_backward, config),
  )


# ----------------------------------------------------------------------------
# sharding: run per shard of the leading axis under the current mesh
# ----------------------------------------------------------------------------
def _row_axes(x, mesh):
  """Mesh axes that shard ``x``'s leading axis (explicit type, else all free axes)."""
  free = tuple(
    name
    for name, kind in zip(mesh.axis_names, mesh.axis_types)
    if kind != jax.sharding.AxisType.Manual
  )
  if not free:
    return free, ()
  if all(kind == jax.sharding.AxisType.Explicit for kind in mesh.axis_types):
    spec = jax.typeof(x).sharding.spec
    lead = spec[0] if len(spec) else None
    lead = () if lead is None else (lead if isinstance(lead, tuple) else (lead,))
    return free, tuple(lead)
  size = math.prod(mesh.shape[name] for name in free)
  return free, (free if x.shape[0] % size == 0 else ())


def per_shard(fn, x, *replicated):
  """``fn(x, *replicated)``, inside ``jax.shard_map`` when a mesh is set.

  Rows of ``x`` (its leading axis) are split over the mesh axes that shard it;
  ``replicated`` (scale, bias) are whole on every shard. shard_map's transpose sums
  their cotangents over the shards, which completes dscale/dbias.
  """
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or x.ndim < 2:
    return fn(x, *replicated)
  free, row_axes = _row_axes(x, mesh)
  if not free:
    return fn(x, *replicated)
  row_spec = P(row_axes if row_axes else None)
  in_specs = (row_spec,) + (P(),) * len(replicated)
  return jax.shard_map(
    fn, in_specs=in_specs, out_specs=row_spec, axis_names=set(free), check_vma=False
  )(x, *replicated)


def layer_norm(
  x, scale, bias=None, *, epsilon=1e-6, flavor="blocked", block_rows=None, interpret=False
):
  """Pallas LayerNorm over the last axis (see module docstring for the flavours)."""
  kernels = pallas_kernels(PallasConfig(flavor, block_rows, interpret))
  run = lambda x, scale, bias: fused.layer_norm(x, scale, bias, epsilon=epsilon, kernels=kernels)
  return per_shard(run, x, scale, bias)


def rms_norm(x, scale, *, epsilon=1e-6, flavor="blocked", block_rows=None, interpret=False):
  """Pallas RMSNorm over the last axis (see module docstring for the flavours)."""
  kernels = pallas_kernels(PallasConfig(flavor, block_rows, interpret))
  run = lambda x, scale: fused.rms_norm(x, scale, epsilon=epsilon, kernels=kernels)
  return per_shard(run, x, scale)
