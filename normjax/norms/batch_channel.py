"""Batch-Channel Normalization (Qiao, Wang, Liu, Shen, Yuille 2019, arXiv 1903.10520).

"Micro-Batch Training with Batch-Channel Normalization and Weight Standardization". BCN is
a batch part followed by a channel part, y = ChannelNorm(BatchNorm(x)), channels-last x:

1. batch part, per channel c (with its own per-channel affine ``batch_scale``/``batch_bias``):
   * ``estimated=False``: a standard BatchNorm, z = (x - mu_B) / sqrt(s2_B + eps) * a + b in
     training (gradients flow through the batch statistics), running statistics in eval;
     r <- momentum * r + (1 - momentum) * batch_stat, population variance.
   * ``estimated=True`` (``EstBN``, for micro-batches): always normalizes with the RUNNING
     statistics, which are first updated in training (no gradient through them):
       mu <- m * mu + (1 - m) * mean_B(x),   s2 <- m * s2 + (1 - m) * mean_B((x - mu_old)^2)
     (the variance estimate is the deviation from the OLD running mean, not the batch mean),
     then z = (x - mu) / sqrt(s2 + eps) * a + b, in training and eval alike.
2. channel part: per sample, standardize each group of C/G channels over space and the group
   (GroupNorm statistics, train and eval alike), then a PER-GROUP affine ``scale``/``bias`` of
   shape (G,) (init 1/0) -- not per channel.

Official code (joe-siyuan-qiao/Batch-Channel-Normalization: README ``BCNorm``/``EstBN``,
``imagenet/models/layers.py`` ``GN``): G = 32; PyTorch BatchNorm momentum 0.1, i.e.
``momentum=0.9`` here (weight on the old value). Epsilons are per part, as there:
``BCNorm(eps)``'s ``eps`` reaches only the channel part (``torch.batch_norm(..., eps)`` over
the (sample, group) rows); the batch part is a default ``nn.BatchNorm2d`` (eps 1e-5) or
``EstBN`` (1e-5 written into its forward). So ``epsilon`` here is the channel part's and
``batch_epsilon`` the batch part's, both 1e-5 by default (``layers.py`` hard-codes 1e-5 in both).
Deviation: ``EstBN`` updates with a buffer ``estbn_moving_speed`` that starts at 0 and is meant
to be set by the training loop (nothing in the repo sets it; at 0 the statistics never move).
Here the speed is ``1 - momentum`` from the start (0.1 by default); ``momentum=1.0`` reproduces
the frozen buffer.
Use BCN together with Weight Standardization (``WSConv`` (``models/ws_conv.py``)).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from normjax.norms import register
from normjax.norms.base import (
  TORCH_MOMENTUM,
  StatefulNorm,
  apply_affine,
  batch_axes,
  check_fraction,
  check_positive,
  moments,
  normalize,
  stats_dtype,
)
from normjax.norms.basic import batch_norm
from normjax.norms.evonorm import group_moments


def estimated_batch_norm(x, params, state, *, train, mask=None, momentum=0.9, epsilon=1e-5):
  """EstBN: normalize with running statistics updated first (in training) from the batch.

  ``params`` = {scale, bias} per channel, ``state`` = {'mean', 'var'} (C,). Returns (y, state).
  """
  mean, var = state["mean"], state["var"]
  if train:
    xs = jax.lax.stop_gradient(x)
    axes = batch_axes(x)
    batch_mean, _ = moments(xs, axes, mask)
    _, deviation = moments(xs.astype(mean.dtype) - mean, axes, mask, center=False)
    mix = lambda old, new: (
      momentum * old + (1 - momentum) * new.reshape(old.shape).astype(old.dtype)
    )
    mean, var = mix(mean, batch_mean), mix(var, deviation)
    state = {"mean": mean, "var": var}
  return normalize(x, mean, var, params, epsilon), state


def batch_channel_norm(
  x,
  params,
  state,
  *,
  train,
  mask=None,
  num_groups=32,
  momentum=0.9,
  epsilon=1e-5,
  batch_epsilon=1e-5,
  estimated=False,
):
  """BCN: batch part (BatchNorm or EstBN) then per-sample group standardization + per-group affine.

  ``params`` = {'batch': {scale, bias} (C,), 'scale', 'bias': (G,)};
  ``state`` = {'mean', 'var'} (C,). ``epsilon``: the channel part's (official ``BCNorm(eps)``);
  ``batch_epsilon``: the batch part's. Returns (y, new_state).
  """
  channels = x.shape[-1]
  if channels % num_groups:
    raise ValueError(
      f"batch_channel_norm num_groups={num_groups} does not divide the "
      f"{channels} channels; use a divisor of {channels}"
    )
  batch_part = estimated_batch_norm if estimated else batch_norm
  z, new_state = batch_part(
    x,
    params.get("batch", {}),
    state,
    train=train,
    mask=mask,
    momentum=momentum,
    epsilon=batch_epsilon,
  )
  if z.ndim < 3:
    raise ValueError(f"batch_channel_norm needs (batch, spatial..., C) input; got {x.shape}")
  zf = z.astype(stats_dtype(z))
  mean, var = group_moments(zf, num_groups, mask)  # GroupNorm statistics, channels-last sums
  per_group = {
    k: jnp.repeat(params[k], channels // num_groups)
    for k in ("scale", "bias")
    if params.get(k) is not None
  }
  y = apply_affine((zf - mean) * jax.lax.rsqrt(var + epsilon), per_group)
  return y.astype(x.dtype), new_state


@register("batch_channel_norm")
class BatchChannelNorm(StatefulNorm):
  """BCN module; see ``batch_channel_norm``.

  Variables: ``batch_scale``/``batch_bias`` (C,) (the batch part's affine), ``scale``/``bias``
  (G,) (the per-group affine; ``scale`` is what ``zero_init_scale`` zeroes), running
  ``mean``/``var`` (``nnx.BatchStat``, init 0/1, float32).

  Args: num_features; num_groups (32); momentum (0.9, weight on the old value); epsilon (the
  channel part's, 1e-5); batch_epsilon (the batch part's, 1e-5); estimated (EstBN batch part);
  use_running_average (eval mode).
  """

  uses_batch_statistics = True
  state_variables = ("mean", "var")
  function = staticmethod(batch_channel_norm)

  def __init__(
    self,
    num_features: int,
    *,
    num_groups: int = 32,
    momentum: float = 0.9,
    epsilon: float = 1e-5,
    batch_epsilon: float = 1e-5,
    estimated: bool = False,
    use_running_average: bool = False,
    rngs: nnx.Rngs | None = None,
  ):
    del rngs
    check_positive("epsilon", epsilon)
    check_positive("batch_epsilon", batch_epsilon)
    check_fraction("momentum", momentum, "batch_channel_norm", TORCH_MOMENTUM)
    if num_groups < 1 or num_features % num_groups:
      divisors = [d for d in range(1, num_features + 1) if num_features % d == 0]
      raise ValueError(
        f"batch_channel_norm num_groups={num_groups!r} must divide "
        f"num_features={num_features}; valid: {divisors}"
      )
    super().__init__(num_features)
    self.num_groups = num_groups
    self.momentum, self.epsilon, self.batch_epsilon = momentum, epsilon, batch_epsilon
    self.estimated = estimated
    self.use_running_average = use_running_average
    channel_ones = jnp.ones((num_features,), jnp.float32)
    self.batch_scale = nnx.Param(channel_ones)
    self.batch_bias = nnx.Param(jnp.zeros_like(channel_ones))
    self.scale = nnx.Param(jnp.ones((num_groups,), jnp.float32))
    self.bias = nnx.Param(jnp.zeros((num_groups,), jnp.float32))
    self.mean = nnx.BatchStat(jnp.zeros_like(channel_ones))
    self.var = nnx.BatchStat(channel_ones)

  def params(self) -> dict:
    return {
      "batch": {"scale": self.batch_scale[...], "bias": self.batch_bias[...]},
      "scale": self.scale[...],
      "bias": self.bias[...],
    }

  def function_kwargs(self) -> dict:
    return {
      "num_groups": self.num_groups,
      "momentum": self.momentum,
      "epsilon": self.epsilon,
      "batch_epsilon": self.batch_epsilon,
      "estimated": self.estimated,
    }


__all__ = ["estimated_batch_norm", "batch_channel_norm", "BatchChannelNorm"]
