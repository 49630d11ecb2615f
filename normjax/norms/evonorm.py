"""EvoNorm normalization-activation layers (Liu, Brock, Simonyan, Le, NeurIPS 2020).

"Evolving Normalization-Activation Layers", arXiv 2004.02967. Each layer replaces a norm AND
the activation after it. Channels-last ``x`` of shape (B, spatial..., C); population
variances; statistics in float32 (float64 for float64 inputs), output cast to ``x.dtype``.
Per channel: ``scale`` (gamma, init 1), ``bias`` (beta, init 0), ``v`` (init 1).

* ``evonorm_b0`` (batch-dependent):
    y = x / max(sqrt(s2_bhw(x) + eps), v * x + sqrt(s2_hw(x) + eps)) * gamma + beta
  s2_bhw: per-channel variance over batch and space in training; the running variance in
  eval, updated r <- momentum * r + (1 - momentum) * s2_bhw (momentum 0.9 = TF's
  MOVING_AVERAGE_DECAY, weight on the OLD value; init 1, float32, no Bessel correction).
  s2_hw: per-sample, per-channel variance over space.
* ``evonorm_s0`` (sample-based): y = x * sigmoid(v * x) / sqrt(s2_group(x) + eps) * gamma + beta,
  s2_group per sample over space and the C/G channels of each group, as GroupNorm.
* ``evonorm_b1`` (timm ``EvoNorm2dB1``; not in tensorflow/tpu):
    y = x / max(sqrt(s2_bhw(x) + eps), (x + 1) * sqrt(mean_hw(x^2) + eps)) * gamma + beta
  (no ``v``); running variance as B0.
* ``evonorm_s1`` (timm ``EvoNorm2dS1``): y = silu(x) / sqrt(s2_group(x) + eps) * gamma + beta
  (no ``v``).

Official code (tensorflow/tpu:models/official/resnet/resnet_model.py, ``evonorm``):
eps 1e-5, decay 0.9, 32 groups; when C is not divisible the group count is decremented until
it divides C (``evonorm_groups``); ``v`` and ``gamma`` init 1 (gamma 0 with init_zero, the
last norm of a residual block: ``NormAct(zero_init_scale=True)`` does that here).
Quirk kept: with ``apply_act=False`` (TF ``nonlinearity=False``, used on projection
shortcuts and the block's last norm) NO normalization happens: y = gamma * x + beta, and no
``v`` / running variance is created.

Deviations of timm (huggingface/pytorch-image-models:timm/layers/evo_norm.py) NOT followed
here: eps 1e-3 for B0/S0a, a Bessel-corrected running variance, PyTorch momentum 0.1, no
group-divisor search. B1 and S1 take their formulas from timm and every other convention
(eps 1e-5, running variance, divisor search) from the TF B0/S0 above.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from normjax.norms import register
from normjax.norms.base import (
  AffineNorm,
  StatefulNorm,
  apply_affine,
  batch_axes,
  check_fraction,
  check_positive,
  moments,
  stats_dtype,
)

Array = jax.Array


# ----------------------------------------------------------------------------- helpers
def evonorm_groups(channels: int, num_groups: int) -> int:
  """TF's group search: ``num_groups``, decremented until it divides ``channels`` (>= 1)."""
  if num_groups < 1:
    raise ValueError(f"evonorm num_groups={num_groups!r}: must be a positive group count")
  while num_groups > 1 and channels % num_groups:
    num_groups -= 1
  return num_groups


def _spatial_axes(x) -> tuple[int, ...]:
  if x.ndim < 3:
    raise ValueError(
      f"EvoNorm needs (batch, spatial..., C) input with at least one spatial "
      f"axis; got shape {x.shape}"
    )
  return tuple(range(1, x.ndim - 1))


def group_moments(x: Array, groups: int, mask=None) -> tuple[Array, Array]:
  """Per-sample mean and population variance over space and each group's C/G channels.

  Returned per channel, shaped (B, 1, ..., 1, C) (a group's value repeated over its
  channels), in x's dtype (pass float32 or wider). Computed from per-channel spatial sums
  (reductions that keep the channels-last layout) combined per group, two-pass: on XLA:CPU
  about 4x faster forward and 2x faster backward than reducing a (..., G, C/G) reshape over
  its strided axes. ``mask`` (broadcastable to x.shape[:-1], True = real) restricts the
  statistics to real positions.
  """
  batch, channels = x.shape[0], x.shape[-1]
  if groups < 1 or channels % groups:
    raise ValueError(f"groups={groups!r} must divide the {channels} channels")
  size = channels // groups
  spatial = tuple(range(1, x.ndim - 1))
  keep = None if mask is None else jnp.broadcast_to(jnp.asarray(mask, bool)[..., None], x.shape)
  positions = (
    math.prod(x.shape[1:-1])
    if keep is None
    else jnp.sum(keep[..., 0], spatial, dtype=x.dtype)[:, None]
  )
  count = jnp.maximum(positions * size, 1)
  per_channel = lambda v: jnp.repeat(v, size, -1).reshape(batch, *(1,) * len(spatial), channels)

  def group_sum(v):
    v = v if keep is None else jnp.where(keep, v, 0)
    return jnp.sum(v, spatial).reshape(batch, groups, size).sum(-1)

  mean = per_channel(group_sum(x) / count)
  return mean, per_channel(group_sum(jnp.square(x - mean)) / count)


def divide_by_group_std(
  numerator: Array, x: Array, num_groups: int, epsilon: float, mask=None
) -> Array:
  """numerator / sqrt(s2_group(x) + eps), with TF's group-count search (``evonorm_groups``)."""
  _, var = group_moments(x, evonorm_groups(x.shape[-1], num_groups), mask)
  return numerator * jax.lax.rsqrt(var + epsilon)


def _batch_variance(x, state, *, train, mask, momentum):
  """(variance to divide by, new state): batch statistic in training, running one in eval."""
  if not train:
    return state["var"], state
  _, var = moments(x, batch_axes(x), mask)
  var = var.reshape(x.shape[-1])
  new = jax.lax.stop_gradient(
    momentum * state["var"] + (1 - momentum) * var.astype(state["var"].dtype)
  )
  return var, {"var": new}


def _affine_only(x, params):
  return apply_affine(x.astype(stats_dtype(x)), params).astype(x.dtype)


# ----------------------------------------------------------------------------- pure functions
def evonorm_b0(x, params, state, *, train, mask=None, apply_act=True, momentum=0.9, epsilon=1e-5):
  """EvoNorm-B0; ``params`` = {scale, bias, v}, ``state`` = {'var': (C,)}. See module doc."""
  if not apply_act:
    return _affine_only(x, params), state
  var, new_state = _batch_variance(x, state, train=train, mask=mask, momentum=momentum)
  xf = x.astype(stats_dtype(x))
  _, instance_var = moments(x, _spatial_axes(x), mask)
  left = jnp.sqrt(var.astype(xf.dtype) + epsilon)
  right = params["v"] * xf + jnp.sqrt(instance_var + epsilon)
  return apply_affine(xf / jnp.maximum(left, right), params).astype(x.dtype), new_state


def evonorm_b1(x, params, state, *, train, mask=None, apply_act=True, momentum=0.9, epsilon=1e-5):
  """EvoNorm-B1 (timm); ``params`` = {scale, bias}, ``state`` = {'var': (C,)}."""
  if not apply_act:
    return _affine_only(x, params), state
  var, new_state = _batch_variance(x, state, train=train, mask=mask, momentum=momentum)
  xf = x.astype(stats_dtype(x))
  _, mean_square = moments(x, _spatial_axes(x), mask, center=False)
  left = jnp.sqrt(var.astype(xf.dtype) + epsilon)
  right = (xf + 1) * jnp.sqrt(mean_square + epsilon)
  return apply_affine(xf / jnp.maximum(left, right), params).astype(x.dtype), new_state


def evonorm_s0(
  x, params, state=None, *, train=False, mask=None, apply_act=True, num_groups=32, epsilon=1e-5
):
  """EvoNorm-S0; ``params`` = {scale, bias, v}; no state. See module doc."""
  del train
  if not apply_act:
    return _affine_only(x, params), state
  _spatial_axes(x)
  xf = x.astype(stats_dtype(x))
  y = divide_by_group_std(xf * jax.nn.sigmoid(params["v"] * xf), xf, num_groups, epsilon, mask)
  return apply_affine(y, params).astype(x.dtype), state


def evonorm_s1(
  x, params, state=None, *, train=False, mask=None, apply_act=True, num_groups=32, epsilon=1e-5
):
  """EvoNorm-S1 (timm): silu(x) / group std; ``params`` = {scale, bias}; no state."""
  del train
  if not apply_act:
    return _affine_only(x, params), state
  _spatial_axes(x)
  xf = x.astype(stats_dtype(x))
  y = divide_by_group_std(jax.nn.silu(xf), xf, num_groups, epsilon, mask)
  return apply_affine(y, params).astype(x.dtype), state


# ----------------------------------------------------------------------------- NNX modules
class _EvoNorm(AffineNorm):
  """Shared variables: ``scale``/``bias`` (C,), ``v`` (C,) when the variant has it and
  ``apply_act``; subclasses set ``function`` and ``has_v``."""

  fuses_activation = True
  has_v = True

  def __init__(self, num_features: int, *, apply_act: bool, epsilon: float):
    check_positive("epsilon", epsilon)
    super().__init__(num_features)
    self.apply_act, self.epsilon = apply_act, epsilon
    has_v = self.has_v and apply_act
    self.v = nnx.Param(jnp.ones((num_features,), jnp.float32)) if has_v else nnx.data(None)

  def params(self):
    p = super().params()
    if self.v is not None:
      p["v"] = self.v[...]
    return p


class _BatchEvoNorm(StatefulNorm, _EvoNorm):
  """B variants: a running variance ``var`` (``nnx.BatchStat``, init 1) when ``apply_act``
  (``None`` without it: the affine-only quirk has no state)."""

  uses_batch_statistics = True
  state_variables = ("var",)

  def __init__(
    self,
    num_features: int,
    *,
    apply_act: bool = True,
    momentum: float = 0.9,
    epsilon: float = 1e-5,
    use_running_average: bool = False,
    rngs: nnx.Rngs | None = None,
  ):
    del rngs
    check_fraction(
      "momentum",
      momentum,
      "evonorm",
      "weight on the old running variance; TF's decay 0.9, PyTorch's momentum 0.1 -> 0.9",
    )
    super().__init__(num_features, apply_act=apply_act, epsilon=epsilon)
    self.momentum, self.use_running_average = momentum, use_running_average
    ones = jnp.ones((num_features,), jnp.float32)
    self.var = nnx.BatchStat(ones) if apply_act else nnx.data(None)

  def state_dict(self):
    return super().state_dict() if self.var is not None else None

  def function_kwargs(self) -> dict:
    return {"apply_act": self.apply_act, "momentum": self.momentum, "epsilon": self.epsilon}


class _GroupEvoNorm(_EvoNorm):
  """S variants: per-sample group statistics, no state."""

  def __init__(
    self,
    num_features: int,
    *,
    apply_act: bool = True,
    num_groups: int = 32,
    epsilon: float = 1e-5,
    rngs: nnx.Rngs | None = None,
  ):
    del rngs
    super().__init__(num_features, apply_act=apply_act, epsilon=epsilon)
    self.num_groups = evonorm_groups(num_features, num_groups)

  def __call__(self, x, mask=None):
    self._check_features(x)
    return type(self).function(
      x,
      self.params(),
      mask=mask,
      apply_act=self.apply_act,
      num_groups=self.num_groups,
      epsilon=self.epsilon,
    )[0]


@register("evonorm_b0")
class EvoNormB0(_BatchEvoNorm):
  """EvoNorm-B0 norm+activation; see ``evonorm_b0``."""

  function = staticmethod(evonorm_b0)


@register("evonorm_b1")
class EvoNormB1(_BatchEvoNorm):
  """EvoNorm-B1 (timm) norm+activation; see ``evonorm_b1``."""

  function = staticmethod(evonorm_b1)
  has_v = False


@register("evonorm_s0")
class EvoNormS0(_GroupEvoNorm):
  """EvoNorm-S0 norm+activation; see ``evonorm_s0``."""

  function = staticmethod(evonorm_s0)


@register("evonorm_s1")
class EvoNormS1(_GroupEvoNorm):
  """EvoNorm-S1 (timm) norm+activation; see ``evonorm_s1``."""

  function = staticmethod(evonorm_s1)
  has_v = False


__all__ = [
  "evonorm_groups",
  "group_moments",
  "divide_by_group_std",
  "evonorm_b0",
  "evonorm_b1",
  "evonorm_s0",
  "evonorm_s1",
  "EvoNormB0",
  "EvoNormB1",
  "EvoNormS0",
  "EvoNormS1",
]
