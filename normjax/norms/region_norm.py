"""Region Normalization (Yu, Guo, Jin, Wu, Chen, Li, Zhang, Liu, AAAI 2020) for inpainting.

"Region Normalization for Image Inpainting" (arXiv 1911.10375); geekyutao/RN ``rn.py``.
Channels-last x (B, H, W, C); a binary region mask M (B, H, W) (1 = region 1, e.g. the hole).

Core RN (``RN_binarylabel``): for each region R in {M, 1 - M} separately, per channel c,
statistics POOLED over the batch and space of that region (BatchNorm-style, as the official
code; the paper describes an InstanceNorm generalisation -- the author, issue #12, says both
are valid), S_R = number of (b, h, w) in R:

  mu_R = sum_R x / S_R,  s2_R = sum_R (x - mu_R)^2 / S_R,
  RN(x) = (x - mu_R) / sqrt(s2_R + eps * B*H*W / S_R)  on R,  0 outside R,

and RN(x) is the sum of the two regions' results. This is exactly the official procedure
(fill the outside of R with mu_R, BatchNorm without affine and always with batch
statistics, eps 1e-5, multiply by sqrt(S_R / (B*H*W))), written in closed form; an empty
region contributes 0. Batch statistics in training AND eval (no running statistics). The
mask gets no gradient.

* ``region_norm_b`` (RN-B, mask given): M is nearest-resized to the feature size
  (``F.interpolate(mode='nearest')``: source index floor(i * in / out)), then
    y = M * RN(x) * (1 + g_fg) + b_fg + (1 - M) * RN(x) * (1 + g_bg) + b_bg,
  per-channel g, b initialised to 0 (identity). Quirk kept: b_fg and b_bg are NOT masked in
  the official code, so both biases apply everywhere.
* ``region_norm_l`` (RN-L, no input mask): spatial attention
    s = sigmoid(conv7x7([mean_c(x), max_c(x)]))  (no bias, zero padding 3),
  M = 1[s >= threshold] on the detached s (threshold 0.8), then the pixel-wise affine
    y = RN(x) * (1 + conv7x7_g(s)) + conv7x7_b(s)   (1 -> 1 channel convs with bias),
  broadcast over channels. Convs initialised as PyTorch's default (U(+-1/sqrt(fan_in))).

The modules are plain ``normjax.norms.base.Norm``s, not ``StatefulNorm``s: RN keeps no state
(batch statistics in training and eval, no running statistics), so there is nothing to collect
or write back; ``uses_batch_statistics`` is True because each output depends on the batch.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from normjax.norms import register
from normjax.norms.base import Norm, batch_axes, check_positive, moments, stats_dtype

Array = jax.Array
ATTENTION_KERNEL = 7


def region_mask(mask, x: Array) -> Array:
  """``mask`` as a bool (B, H, W) at ``x``'s spatial size (nearest resize; > 0.5 = region 1)."""
  m = jnp.asarray(mask)
  if m.ndim == x.ndim and m.shape[-1] == 1:
    m = m[..., 0]
  if m.ndim != x.ndim - 1 or m.shape[0] not in (1, x.shape[0]):
    raise ValueError(
      f"region mask of shape {jnp.shape(mask)} does not fit features of shape "
      f"{x.shape}; give (B, H, W) or (B, H, W, 1)"
    )
  for axis in range(1, m.ndim):
    size_in, size_out = m.shape[axis], x.shape[axis]
    if size_in != size_out:
      m = jnp.take(m, (jnp.arange(size_out) * size_in) // size_out, axis=axis)
  m = m > 0.5 if m.dtype != jnp.bool_ else m
  return jnp.broadcast_to(jax.lax.stop_gradient(m), x.shape[:-1])


def region_normalize(x: Array, region: Array, *, epsilon: float = 1e-5) -> Array:
  """One region: (x - mu_R) / sqrt(s2_R + eps * B*H*W / S_R) on the region, 0 elsewhere."""
  mean, var = moments(x, batch_axes(x), region)
  count = jnp.maximum(jnp.sum(region, dtype=mean.dtype), 1)
  total = math.prod(x.shape[:-1])
  y = (x.astype(mean.dtype) - mean) * jax.lax.rsqrt(var + epsilon * total / count)
  return jnp.where(region[..., None], y, 0)


def region_norm(x: Array, region: Array, *, epsilon: float = 1e-5) -> Array:
  """Core RN (``RN_binarylabel``): both regions normalized separately, summed (stats dtype)."""
  return region_normalize(x, region, epsilon=epsilon) + region_normalize(
    x, ~region, epsilon=epsilon
  )


def region_norm_b(x, params, state=None, *, train=False, mask, epsilon=1e-5):
  """RN-B; ``params`` = {foreground_scale, foreground_bias, background_scale,
  background_bias} (C,); ``mask`` = the region mask (1 = foreground). Returns (y, state)."""
  del train  # batch statistics in training and eval
  region = region_mask(mask, x)
  normalized = region_norm(x, region, epsilon=epsilon)
  fg = region[..., None].astype(normalized.dtype)
  y = (
    fg * normalized * (1 + params["foreground_scale"])
    + params["foreground_bias"]
    + (1 - fg) * normalized * (1 + params["background_scale"])
    + params["background_bias"]
  )
  return y.astype(x.dtype), state


def _conv_same(x: Array, kernel: Array) -> Array:
  pad = kernel.shape[0] // 2
  return jax.lax.conv_general_dilated(
    x,
    kernel.astype(x.dtype),
    (1, 1),
    ((pad, pad), (pad, pad)),
    dimension_numbers=("NHWC", "HWIO", "NHWC"),
  )


def spatial_attention(x: Array, params) -> Array:
  """s = sigmoid(conv7x7([mean_c(x), max_c(x)])), shape (B, H, W, 1), in the stats dtype."""
  xf = x.astype(stats_dtype(x))
  pooled = jnp.concatenate([jnp.mean(xf, -1, keepdims=True), jnp.max(xf, -1, keepdims=True)], -1)
  return jax.nn.sigmoid(_conv_same(pooled, params["attention_kernel"]))


def region_norm_l(x, params, state=None, *, train=False, mask=None, threshold=0.8, epsilon=1e-5):
  """RN-L; ``params`` = {attention_kernel (7,7,2,1), gamma_kernel, beta_kernel (7,7,1,1),
  gamma_bias, beta_bias (1,)}. ``mask`` is not used (the region comes from attention)."""
  del train, mask
  if x.ndim != 4:
    raise ValueError(f"region_norm_l needs (B, H, W, C) features; got shape {x.shape}")
  s = spatial_attention(x, params)
  region = jax.lax.stop_gradient(s[..., 0]) >= threshold
  gamma = _conv_same(s, params["gamma_kernel"]) + params["gamma_bias"]
  beta = _conv_same(s, params["beta_kernel"]) + params["beta_bias"]
  y = region_norm(x, region, epsilon=epsilon) * (1 + gamma) + beta
  return y.astype(x.dtype), state


def _torch_default_init(key, shapes_and_fans):
  """U(+-1/sqrt(fan_in)) arrays (PyTorch's conv default), from ONE uniform draw (fast compile)."""
  sizes = [math.prod(shape) for shape, _ in shapes_and_fans]
  raw = jax.random.uniform(key, (sum(sizes),), jnp.float32, -1.0, 1.0)
  out, start = [], 0
  for (shape, fan_in), size in zip(shapes_and_fans, sizes):
    out.append(raw[start : start + size].reshape(shape) / math.sqrt(fan_in))
    start += size
  return out


@register("region_norm_b")
class RegionNormB(Norm):
  """RN-B module (mask-conditioned); call ``norm(x, mask=region)``. See ``region_norm_b``."""

  uses_batch_statistics = True

  def __init__(self, num_features: int, *, epsilon: float = 1e-5, rngs: nnx.Rngs | None = None):
    del rngs
    check_positive("epsilon", epsilon)
    super().__init__(num_features)
    self.epsilon = epsilon
    for name in ("foreground_scale", "foreground_bias", "background_scale", "background_bias"):
      setattr(self, name, nnx.Param(jnp.zeros((num_features,), jnp.float32)))

  def __call__(self, x, mask=None):
    if mask is None:
      raise ValueError(
        "region_norm_b needs the region mask: call norm(x, mask=M) with M "
        "(B, H, W) or (B, H, W, 1), 1 = hole; use region_norm_l without a mask"
      )
    self._check_features(x)
    params = {
      n: getattr(self, n)[...]
      for n in ("foreground_scale", "foreground_bias", "background_scale", "background_bias")
    }
    return region_norm_b(x, params, mask=mask, epsilon=self.epsilon)[0]


@register("region_norm_l")
class RegionNormL(Norm):
  """RN-L module (self-aware region from spatial attention); see ``region_norm_l``."""

  uses_batch_statistics = True

  def __init__(
    self, num_features: int, *, threshold: float = 0.8, epsilon: float = 1e-5, rngs: nnx.Rngs
  ):
    check_positive("epsilon", epsilon)
    if not 0.0 <= threshold <= 1.0:
      raise ValueError(
        f"region_norm_l threshold={threshold!r}: must be in [0, 1] (a sigmoid "
        f"attention level; 0.8 in the paper)"
      )
    super().__init__(num_features)
    self.threshold, self.epsilon = threshold, epsilon
    k = ATTENTION_KERNEL
    values = _torch_default_init(
      rngs.params(),
      [
        ((k, k, 2, 1), 2 * k * k),
        ((k, k, 1, 1), k * k),
        ((1,), k * k),
        ((k, k, 1, 1), k * k),
        ((1,), k * k),
      ],
    )
    for name, value in zip(
      ("attention_kernel", "gamma_kernel", "gamma_bias", "beta_kernel", "beta_bias"), values
    ):
      setattr(self, name, nnx.Param(value))

  def params(self):
    return {
      n: getattr(self, n)[...]
      for n in ("attention_kernel", "gamma_kernel", "gamma_bias", "beta_kernel", "beta_bias")
    }

  def __call__(self, x, mask=None):
    self._check_features(x)
    return region_norm_l(x, self.params(), threshold=self.threshold, epsilon=self.epsilon)[0]


__all__ = [
  "region_mask",
  "region_normalize",
  "region_norm",
  "region_norm_b",
  "spatial_attention",
  "region_norm_l",
  "RegionNormB",
  "RegionNormL",
]
