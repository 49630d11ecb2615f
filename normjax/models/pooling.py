"""Max pooling whose backward is elementwise work instead of XLA:CPU's select-and-scatter.

    y = max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))   # NHWC, as nnx.max_pool

Forward: ``y[n, p, q, c] = max over the window of the -inf-padded x``, computed as a running
maximum over the ``kh * kw`` strided slices of the padded input, which also records the
window offset of the first maximum (row-major order in the window; strict ``>`` keeps the
first). Backward (``jax.custom_vjp``): each output's cotangent goes to that first maximum,
the rule of PyTorch's ``max_pool2d`` and of XLA's select-and-scatter (``>=`` select on
windows in order); the input cotangent is the sum over the window offsets of the cotangents
whose maximum sat at that offset, each placed back on its strided grid with ``lax.pad``.
Residuals: the offsets (int8, output-sized) only.

Why: the autodiff of ``lax.reduce_window`` max lowers on XLA:CPU to a reduce-window over
(value, index) pairs with four int32 iota arrays of the padded input's size; in the
ImageNet-stem ResNet of ``scripts/bench_vs_torch.py`` that was ~110 ms of a 1.3 s step
(``benchmarks.md``). NaNs are not propagated the way ``lax.reduce_window`` does (a window
holding a NaN yields its other maximum).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np


def _geometry(shape, window, strides, padding):
  _, h, w, _ = shape
  (kh, kw), (sh, sw) = window, strides
  (pt, pb), (pl, pr) = padding
  out_h = (h + pt + pb - kh) // sh + 1
  out_w = (w + pl + pr - kw) // sw + 1
  return out_h, out_w


def _slices(xp, window, strides, out_hw):
  (kh, kw), (sh, sw), (out_h, out_w) = window, strides, out_hw
  n, _, _, c = xp.shape
  for i in range(kh):
    for j in range(kw):
      stop = (n, i + (out_h - 1) * sh + 1, j + (out_w - 1) * sw + 1, c)
      yield i, j, jax.lax.slice(xp, (0, i, j, 0), stop, (1, sh, sw, 1))


def _forward(x, window, strides, padding):
  out_hw = _geometry(x.shape, window, strides, padding)
  xp = jnp.pad(x, ((0, 0), *padding, (0, 0)), constant_values=-jnp.inf)
  best = offset = None
  for i, j, part in _slices(xp, window, strides, out_hw):
    k = i * window[1] + j
    if best is None:
      best, offset = part, jnp.zeros(part.shape, jnp.int8)
      continue
    take = part > best
    best = jnp.where(take, part, best)
    offset = jnp.where(take, jnp.int8(k), offset)
  return best, offset


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _max_pool(x, window, strides, padding):
  return _forward(x, window, strides, padding)[0]


def _max_pool_fwd(x, window, strides, padding):
  y, offset = _forward(x, window, strides, padding)
  return y, (offset, x.shape)


def _max_pool_bwd(window, strides, padding, residuals, dy):
  offset, shape = residuals
  (kh, kw), (sh, sw) = window, strides
  (pt, pb), (pl, pr) = padding
  out_h, out_w = dy.shape[1:3]
  hp, wp = shape[1] + pt + pb, shape[2] + pl + pr
  zero = jnp.zeros((), dy.dtype)
  dxp = None
  for i in range(kh):
    for j in range(kw):
      part = jnp.where(offset == i * kw + j, dy, zero)
      config = (
        (0, 0, 0),
        (i, hp - i - (out_h - 1) * sh - 1, sh - 1),
        (j, wp - j - (out_w - 1) * sw - 1, sw - 1),
        (0, 0, 0),
      )
      placed = jax.lax.pad(part, zero, config)
      dxp = placed if dxp is None else dxp + placed
  return (dxp[:, pt : pt + shape[1], pl : pl + shape[2]],)


_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


def max_pool(x, window_shape, strides=None, padding=((0, 0), (0, 0))):
  """NHWC max pooling (``nnx.max_pool``'s arguments, explicit padding pairs)."""
  window = tuple(int(k) for k in window_shape)
  strides = window if strides is None else tuple(int(s) for s in strides)
  padding = tuple((int(a), int(b)) for a, b in padding)
  if x.ndim != 4 or len(window) != 2 or len(strides) != 2 or len(padding) != 2:
    raise ValueError(f"max_pool takes NHWC x with 2-D window/strides/padding, got {x.shape}")
  if window[0] * window[1] > np.iinfo(np.int8).max:
    raise ValueError(f"window {window} has more than 127 positions")
  return _max_pool(x, window, strides, padding)
