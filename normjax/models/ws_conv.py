"""Convolutions with standardized weights: Weight Standardization and Scaled WS.

Kernels are Flax-laid-out (*window, in / groups, out): each OUTPUT channel is a slice along the
LAST axis, and its fan-in N = prod(window) * in / groups is every other axis. With
``feature_group_count`` = G > 1 (grouped convolution, PyTorch's ``groups``; G = in = out is a
depthwise conv) output channel i reads only the in/G input channels of its group, so it is
standardized over its own (in/G) x kh x kw fan-in, as the official ``Conv2d`` (BCN repo
``imagenet/models/layers.py``, a subclass of ``nn.Conv2d`` that passes ``groups`` on) does.
The standardized kernel is recomputed from the raw ``kernel`` parameter on every call, so
gradients flow through the standardization (no state). Statistics in float32; the conv runs
in ``dtype``.

* ``WSConv`` (Qiao et al. 2019, arXiv 1903.10520; joe-siyuan-qiao/Batch-Channel-Normalization
  ``imagenet/models/layers.py`` ``Conv2d``), per output channel i:
    W_hat_i = (W_i - mean(W_i)) / sqrt(var_unbiased(W_i) + eps),   eps = 1e-5
  (the BCN repo's form: Bessel-corrected variance, eps inside the root; the WS README's
  PyTorch snippet adds eps to the unbiased std instead, timm's StdConv2d uses the population
  variance with eps 1e-6). Use it only before a normalization layer (BN, GN, BCN).
* ``ScaledWSConv`` (Brock, De, Smith 2021, NF-ResNets; google-deepmind/deepmind-research
  ``nfnets/base.py`` ``WSConv2D``), per output channel i with fan-in N:
    W_hat_i = g_i * (W_i - mean(W_i)) / sqrt(max(N * var(W_i), eps)),   eps = 1e-4
  (population variance; eps is a floor on N * var), learnable gain g (init 1), bias (init 0),
  W ~ VarianceScaling(1, fan_in, normal). So sum_j W_hat_ij = 0 and sum_j W_hat_ij^2 = g_i^2:
  the conv preserves the variance of zero-mean independent inputs. The paper's extra gamma
  (the activation's gain) is folded into the activation, as in the DeepMind code
  (``normjax.models.nf_resnet.ACTIVATION_GAINS``); FedWon (Zhuang & Lyu, ICLR 2024) uses this
  layer for every conv of a normalizer-free network.
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from normjax.models import conv_kernel_init

Array = jax.Array
_LETTERS = "HWDTUV"


def standardize_weight(kernel: Array, *, epsilon: float = 1e-5) -> Array:
  """WS: (W - mean) / sqrt(unbiased var + eps) per output channel (last axis), in float32."""
  w = kernel.astype(jnp.promote_types(kernel.dtype, jnp.float32))
  axes = tuple(range(w.ndim - 1))
  mean = jnp.mean(w, axes, keepdims=True)
  var = jnp.var(w, axes, keepdims=True, ddof=1)
  return (w - mean) * jax.lax.rsqrt(var + epsilon)


def scaled_standardize_weight(
  kernel: Array, gain: Array | None = None, *, epsilon: float = 1e-4
) -> Array:
  """Scaled WS: g * (W - mean) / sqrt(max(N * var, eps)) per output channel, in float32."""
  w = kernel.astype(jnp.promote_types(kernel.dtype, jnp.float32))
  axes = tuple(range(w.ndim - 1))
  fan_in = math.prod(w.shape[:-1])
  mean = jnp.mean(w, axes, keepdims=True)
  var = jnp.var(w, axes, keepdims=True)
  scale = jax.lax.rsqrt(jnp.maximum(var * fan_in, epsilon))
  if gain is not None:
    scale = scale * gain
  return (w - mean) * scale


def _window(value, n: int, name: str) -> tuple[int, ...]:
  value = (value,) * n if isinstance(value, int) else tuple(value)
  if len(value) != n or any(int(v) < 1 for v in value):
    raise ValueError(f"conv argument {name}={value!r}: give {n} positive integers (or one)")
  return tuple(int(v) for v in value)


class _StandardizedConv(nnx.Module):
  """Shared conv plumbing: kernel (*window, in, out), optional bias, torch-style padding."""

  def __init__(
    self,
    in_features: int,
    out_features: int,
    kernel_size: int | Sequence[int],
    *,
    strides,
    padding,
    kernel_dilation,
    use_bias: bool,
    kernel_init,
    dtype,
    rngs: nnx.Rngs,
    feature_group_count: int = 1,
  ):
    if in_features < 1 or out_features < 1:
      raise ValueError(
        f"conv features: in_features={in_features}, out_features={out_features}"
        f"; both must be positive"
      )
    groups = feature_group_count
    if (
      not isinstance(groups, int)
      or isinstance(groups, bool)
      or groups < 1
      or in_features % groups
      or out_features % groups
    ):
      raise ValueError(
        f"conv argument feature_group_count={groups!r}: must be a positive "
        f"integer dividing in_features={in_features} and "
        f"out_features={out_features}"
      )
    self.feature_group_count = groups
    window = _window(
      kernel_size, len(kernel_size) if not isinstance(kernel_size, int) else 2, "kernel_size"
    )
    n = len(window)
    self.strides = _window(strides, n, "strides")
    self.kernel_dilation = _window(kernel_dilation, n, "kernel_dilation")
    if padding is None:  # torchvision: k // 2 per side (dilated extent for dilated kernels)
      padding = tuple(
        ((k - 1) * d // 2, (k - 1) * d // 2) for k, d in zip(window, self.kernel_dilation)
      )
    self.padding = padding
    self.dtype = dtype
    self.kernel = nnx.Param(
      kernel_init(rngs.params(), window + (in_features // groups, out_features), jnp.float32)
    )
    self.bias = nnx.Param(jnp.zeros((out_features,), jnp.float32)) if use_bias else nnx.data(None)
    letters = _LETTERS[:n]
    self.dimension_numbers = ("N" + letters + "C", letters + "IO", "N" + letters + "C")

  def standardized_kernel(self) -> Array:
    raise NotImplementedError

  def __call__(self, x: Array) -> Array:
    dtype = self.dtype or x.dtype
    y = jax.lax.conv_general_dilated(
      x.astype(dtype),
      self.standardized_kernel().astype(dtype),
      self.strides,
      self.padding,
      rhs_dilation=self.kernel_dilation,
      dimension_numbers=self.dimension_numbers,
      feature_group_count=self.feature_group_count,
    )
    if self.bias is not None:
      y = y + self.bias[...].astype(dtype)
    return y


class WSConv(_StandardizedConv):
  """Conv with Weight Standardization (BCN repo form); see the module docstring.

  Args: in_features, out_features, kernel_size (int or tuple), strides, padding (None =
  torch-style k // 2 per side, else anything ``lax.conv_general_dilated`` takes),
  kernel_dilation, feature_group_count (1; grouped conv, PyTorch's ``groups``), use_bias
  (default False: WS convs feed a norm), epsilon (1e-5), kernel_init (default He fan-out
  normal, irrelevant up to scale), dtype, rngs.
  """

  def __init__(
    self,
    in_features: int,
    out_features: int,
    kernel_size=3,
    *,
    strides=1,
    padding=None,
    kernel_dilation=1,
    feature_group_count: int = 1,
    use_bias: bool = False,
    epsilon: float = 1e-5,
    kernel_init=None,
    dtype=None,
    rngs: nnx.Rngs,
  ):
    if not epsilon > 0:
      raise ValueError(f"WSConv epsilon={epsilon!r}: must be > 0")
    kernel_init = kernel_init or conv_kernel_init(
      nnx.initializers.variance_scaling(2.0, "fan_out", "normal"), "fan_out"
    )
    super().__init__(
      in_features,
      out_features,
      kernel_size,
      strides=strides,
      padding=padding,
      kernel_dilation=kernel_dilation,
      use_bias=use_bias,
      kernel_init=kernel_init,
      dtype=dtype,
      rngs=rngs,
      feature_group_count=feature_group_count,
    )
    self.epsilon = epsilon

  def standardized_kernel(self) -> Array:
    return standardize_weight(self.kernel[...], epsilon=self.epsilon)


class ScaledWSConv(_StandardizedConv):
  """Conv with Scaled Weight Standardization and a per-output ``gain``; see the module docstring.

  Args as ``WSConv``, plus ``gain_init`` (1.0); ``use_bias`` defaults to True and epsilon to
  1e-4 (the floor on N * var), ``kernel_init`` to VarianceScaling(1, fan_in, normal). With
  ``feature_group_count`` G, N = prod(window) * in / G.
  """

  def __init__(
    self,
    in_features: int,
    out_features: int,
    kernel_size=3,
    *,
    strides=1,
    padding=None,
    kernel_dilation=1,
    feature_group_count: int = 1,
    use_bias: bool = True,
    epsilon: float = 1e-4,
    gain_init: float = 1.0,
    kernel_init=None,
    dtype=None,
    rngs: nnx.Rngs,
  ):
    if not epsilon > 0:
      raise ValueError(f"ScaledWSConv epsilon={epsilon!r}: must be > 0")
    kernel_init = kernel_init or conv_kernel_init(
      nnx.initializers.variance_scaling(1.0, "fan_in", "normal"), "fan_in"
    )
    super().__init__(
      in_features,
      out_features,
      kernel_size,
      strides=strides,
      padding=padding,
      kernel_dilation=kernel_dilation,
      use_bias=use_bias,
      kernel_init=kernel_init,
      dtype=dtype,
      rngs=rngs,
      feature_group_count=feature_group_count,
    )
    self.epsilon = epsilon
    self.gain = nnx.Param(jnp.full((out_features,), gain_init, jnp.float32))

  def standardized_kernel(self) -> Array:
    return scaled_standardize_weight(self.kernel[...], self.gain[...], epsilon=self.epsilon)


def ws_conv_layer(
  in_features: int, out_features: int, kernel_size: int, *, strides: int = 1, dtype, rngs: nnx.Rngs
) -> WSConv:
  """ResNet ``CONVS['ws']`` factory: bias-free WS conv, torchvision padding."""
  return WSConv(in_features, out_features, kernel_size, strides=strides, dtype=dtype, rngs=rngs)


def scaled_ws_conv_layer(
  in_features: int, out_features: int, kernel_size: int, *, strides: int = 1, dtype, rngs: nnx.Rngs
) -> ScaledWSConv:
  """ResNet ``CONVS['scaled_ws']`` factory: Scaled WS conv with gain and bias."""
  return ScaledWSConv(
    in_features, out_features, kernel_size, strides=strides, dtype=dtype, rngs=rngs
  )


__all__ = [
  "standardize_weight",
  "scaled_standardize_weight",
  "WSConv",
  "ScaledWSConv",
  "ws_conv_layer",
  "scaled_ws_conv_layer",
]
