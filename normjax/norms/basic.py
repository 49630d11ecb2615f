"""Standard normalization layers: LayerNorm, RMSNorm, BatchNorm, GroupNorm, InstanceNorm, none.

Every layer is a pure function ``f(x, params, state, *, train, mask=None, ...) -> (y, state)``
plus a thin Flax NNX module that owns the variables and calls it. ``x`` is channels-last
``(batch, ..., C)``; ``params`` is a dict with the optional keys ``scale`` and ``bias`` (shape
``(C,)``); ``state`` is ``None`` for per-example norms and ``{'mean', 'var'}`` for BatchNorm.

Conventions (flax ``flax/nnx/nn/normalization.py``, see reference/norms.md §11); the shared
numerics (``moments``, ``normalize``, ...) live in ``normjax.norms.base``:

* y = (x - mean) / sqrt(var + epsilon) * scale + bias, with the population (biased) variance.
  Statistics are computed in float32 (float64 for float64 inputs) and the output is cast back
  to ``x.dtype``, so bfloat16 activations stay bfloat16. The variance is the two-pass
  mean((x - mean)^2), not flax's default E[x^2] - E[x]^2, which cancels badly for large means.
* epsilon defaults: 1e-6 for LayerNorm, RMSNorm, GroupNorm, InstanceNorm; 1e-5 for BatchNorm.
* ``mask`` (bool, broadcastable to ``x.shape[:-1]``, True = real token) restricts statistics
  taken across positions (BatchNorm, GroupNorm, InstanceNorm) to real tokens; padded positions
  are still normalized (with those statistics). Per-token norms (LayerNorm, RMSNorm) accept
  it and ignore it: each token's statistics never involve other positions.
* BatchNorm running statistics: r <- momentum * r + (1 - momentum) * batch_stat, momentum 0.99
  (``BATCH_NORM_MOMENTUM``; weight on the OLD value, as flax; PyTorch's momentum=0.1 is flax's
  0.9), the stored variance is the population variance (PyTorch stores the unbiased one).
  Under ``jax.jit`` with the batch sharded over a mesh axis, the mean over the batch axis is
  already the global statistic: XLA inserts the all-reduce, so no ``axis_name`` is needed.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from normjax import kernels
from normjax.kernels.batch_norm import batch_norm_train
from normjax.norms import register
from normjax.norms.base import (
  TORCH_MOMENTUM,
  AffineNorm,
  Norm,
  StatefulNorm,
  apply_affine,
  batch_axes,
  check_fraction,
  check_positive,
  moments,
  normalize,
  stats_dtype,
)

BATCH_NORM_MOMENTUM = 0.99  # flax's default (weight on the old value); PyTorch's 0.1 is 0.9


# ----------------------------------------------------------------------------- pure functions
def layer_norm(x, params, state=None, *, train=False, mask=None, epsilon=1e-6):
  """LayerNorm (Ba et al. 2016): per token over the last axis, y = (x - mu)/sqrt(s^2 + eps)*g + b.

  Runs on ``normjax.kernels.layer_norm`` (two-pass float32 statistics; a fused custom_vjp on
  CPU, Pallas on GPU/TPU; ``NORMJAX_KERNELS=reference`` for plain autodiff, e.g. forward mode).
  """
  del train, mask  # per-token statistics
  return kernels.layer_norm(x, params.get("scale"), params.get("bias"), epsilon=epsilon), state


def rms_norm(x, params, state=None, *, train=False, mask=None, epsilon=1e-6):
  """RMSNorm (Zhang & Sennrich 2019): y = x / sqrt(mean(x^2) + eps) * g, per token, no centering.

  Runs on ``normjax.kernels.rms_norm`` (see ``layer_norm``).
  """
  del train, mask
  return kernels.rms_norm(x, params.get("scale"), epsilon=epsilon), state


def batch_norm(x, params, state, *, train, mask=None, momentum=BATCH_NORM_MOMENTUM, epsilon=1e-5):
  """BatchNorm (Ioffe & Szegedy 2015) over every axis but the last (B, B*T or B*H*W samples).

  Train: normalize with the batch mean/population variance (gradients flow through them) and
  return the updated running statistics r <- momentum*r + (1-momentum)*batch (stop-gradient).
  Without a mask, where ``normjax.kernels`` resolves to "fused" (CPU), the training forward
  and backward run as one custom_vjp (``normjax/kernels/batch_norm.py``); ``NORMJAX_KERNELS=
  reference`` gives plain autodiff (e.g. for forward mode).
  Eval: normalize with ``state['mean']``/``state['var']`` and return the state unchanged.
  """
  if not train:
    return normalize(x, state["mean"], state["var"], params, epsilon), state
  update = lambda old, new: jax.lax.stop_gradient(
    momentum * old + (1 - momentum) * new.reshape(old.shape).astype(old.dtype)
  )
  if mask is None and x.ndim >= 2 and kernels.resolve_implementation(x) == "fused":
    # XLA:CPU: the custom_vjp with dots for the channel sums (normjax/kernels/batch_norm.py)
    channels, ct = x.shape[-1], stats_dtype(x)
    scale, bias = params.get("scale"), params.get("bias")
    scale = jnp.ones((channels,), ct) if scale is None else scale
    bias = jnp.zeros((channels,), ct) if bias is None else bias
    y, mean, var = batch_norm_train(x, scale, bias, epsilon)
  else:
    mean, var = moments(x, batch_axes(x), mask)
    y = normalize(x, mean, var, params, epsilon)
  new_state = {"mean": update(state["mean"], mean), "var": update(state["var"], var)}
  return y, new_state


def group_norm(x, params, state=None, *, train=False, mask=None, num_groups=32, epsilon=1e-6):
  """GroupNorm (Wu & He 2018): per example, per group of C/G channels, over all non-batch axes."""
  del train
  channels = x.shape[-1]
  if channels % num_groups:
    raise ValueError(
      f"groupnorm num_groups={num_groups} does not divide the {channels} channels; "
      f"use a divisor of {channels} (or set group_size)"
    )
  grouped = x.reshape(*x.shape[:-1], num_groups, channels // num_groups)
  group_mask = None if mask is None else jnp.asarray(mask, bool)[..., None]
  # every axis except the batch axis and the group axis (-2)
  axes = tuple(range(1, grouped.ndim - 2)) + (grouped.ndim - 1,)
  mean, var = moments(grouped, axes, group_mask)
  y = (grouped.astype(mean.dtype) - mean) * jax.lax.rsqrt(var + epsilon)
  return apply_affine(y.reshape(x.shape), params).astype(x.dtype), state


def instance_norm(x, params, state=None, *, train=False, mask=None, epsilon=1e-6):
  """InstanceNorm (Ulyanov et al. 2016): per example and channel over the spatial/time axes."""
  del train
  if x.ndim < 3:
    raise ValueError(
      f"instancenorm needs (batch, spatial..., C) input with at least one spatial "
      f"or time axis; got shape {x.shape}"
    )
  mean, var = moments(x, tuple(range(1, x.ndim - 1)), mask)
  return normalize(x, mean, var, params, epsilon), state


def identity(x, params=None, state=None, *, train=False, mask=None):
  """No normalization: y = x."""
  del params, train, mask
  return x, state


# ----------------------------------------------------------------------------- NNX modules
@register("layernorm")
class LayerNorm(AffineNorm):
  """LayerNorm module over the last axis; see ``layer_norm``."""

  def __init__(
    self,
    num_features: int,
    *,
    epsilon: float = 1e-6,
    use_scale: bool = True,
    use_bias: bool = True,
    rngs: nnx.Rngs | None = None,
  ):
    del rngs  # deterministic init
    check_positive("epsilon", epsilon)
    super().__init__(num_features, use_scale=use_scale, use_bias=use_bias)
    self.epsilon = epsilon

  def __call__(self, x, mask=None):
    self._check_features(x)
    return layer_norm(x, self.params(), epsilon=self.epsilon)[0]


@register("rmsnorm")
class RMSNorm(AffineNorm):
  """RMSNorm module (scale only, as flax); see ``rms_norm``."""

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
    super().__init__(num_features, use_scale=use_scale, use_bias=False)
    self.epsilon = epsilon

  def __call__(self, x, mask=None):
    self._check_features(x)
    return rms_norm(x, self.params(), epsilon=self.epsilon)[0]


@register("batchnorm")
class BatchNorm(StatefulNorm, AffineNorm):
  """BatchNorm module; running ``mean``/``var`` are ``nnx.BatchStat`` (init 0 and 1, float32).

  ``use_running_average=False`` (training) normalizes with batch statistics and updates the
  running ones in place; ``model.eval()`` (or ``nnx.view(m, use_running_average=True)``) switches
  to the running statistics. See ``batch_norm``.
  """

  uses_batch_statistics = True
  state_variables = ("mean", "var")
  function = staticmethod(batch_norm)

  def __init__(
    self,
    num_features: int,
    *,
    momentum: float = BATCH_NORM_MOMENTUM,
    epsilon: float = 1e-5,
    use_scale: bool = True,
    use_bias: bool = True,
    use_running_average: bool = False,
    rngs: nnx.Rngs | None = None,
  ):
    del rngs
    check_positive("epsilon", epsilon)
    check_fraction("momentum", momentum, "batchnorm", TORCH_MOMENTUM)
    super().__init__(num_features, use_scale=use_scale, use_bias=use_bias)
    self.momentum, self.epsilon = momentum, epsilon
    self.use_running_average = use_running_average
    self.mean = nnx.BatchStat(jnp.zeros((num_features,), jnp.float32))
    self.var = nnx.BatchStat(jnp.ones((num_features,), jnp.float32))

  def function_kwargs(self) -> dict:
    return {"momentum": self.momentum, "epsilon": self.epsilon}

  def eval_affine(self):
    """(a, c) with eval output = a * x + c: a = scale / sqrt(var + eps), c = bias - mean * a."""
    params = self.params()
    a = params.get("scale", 1.0) * jax.lax.rsqrt(self.var[...] + self.epsilon)
    return a, params.get("bias", 0.0) - self.mean[...] * a


@register("groupnorm")
class GroupNorm(AffineNorm):
  """GroupNorm module with per-channel affine; ``group_size``, when given, sets the group count."""

  def __init__(
    self,
    num_features: int,
    *,
    num_groups: int = 32,
    group_size: int | None = None,
    epsilon: float = 1e-6,
    use_scale: bool = True,
    use_bias: bool = True,
    rngs: nnx.Rngs | None = None,
  ):
    del rngs
    check_positive("epsilon", epsilon)
    if group_size is not None:
      if group_size <= 0 or num_features % group_size:
        raise ValueError(
          f"groupnorm group_size={group_size!r} must be a positive divisor of "
          f"num_features={num_features}"
        )
      num_groups = num_features // group_size
    if num_groups <= 0 or num_features % num_groups:
      divisors = [d for d in range(1, num_features + 1) if num_features % d == 0]
      raise ValueError(
        f"groupnorm num_groups={num_groups!r} must divide num_features="
        f"{num_features}; valid: {divisors}"
      )
    super().__init__(num_features, use_scale=use_scale, use_bias=use_bias)
    self.num_groups, self.epsilon = num_groups, epsilon

  def __call__(self, x, mask=None):
    self._check_features(x)
    return group_norm(
      x, self.params(), mask=mask, num_groups=self.num_groups, epsilon=self.epsilon
    )[0]


@register("instancenorm")
class InstanceNorm(AffineNorm):
  """InstanceNorm module with per-channel affine; see ``instance_norm``."""

  def __init__(
    self,
    num_features: int,
    *,
    epsilon: float = 1e-6,
    use_scale: bool = True,
    use_bias: bool = True,
    rngs: nnx.Rngs | None = None,
  ):
    del rngs
    check_positive("epsilon", epsilon)
    super().__init__(num_features, use_scale=use_scale, use_bias=use_bias)
    self.epsilon = epsilon

  def __call__(self, x, mask=None):
    self._check_features(x)
    return instance_norm(x, self.params(), mask=mask, epsilon=self.epsilon)[0]


@register("none")
class Identity(Norm):
  """No normalization (y = x); takes the norm constructor/call signature, has no variables."""

  def __init__(self, num_features: int, *, rngs: nnx.Rngs | None = None):
    del rngs
    super().__init__(num_features)

  def __call__(self, x, mask=None):
    return identity(x)[0]


__all__ = [
  "BATCH_NORM_MOMENTUM",
  "layer_norm",
  "rms_norm",
  "batch_norm",
  "group_norm",
  "instance_norm",
  "identity",
  "LayerNorm",
  "RMSNorm",
  "BatchNorm",
  "GroupNorm",
  "InstanceNorm",
  "Identity",
]
