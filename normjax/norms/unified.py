"""Unified Normalization (Yang, Wang, Zhang, Liu, Li, Lin; ACM MM 2022), as the official code.

Official code: ``hikvision-research/Unified-Normalization:image_classification/models/
unified_normalization/unified_normalization.py`` (UN1d, UN2dFunction). Channels-last input
``(..., C)``; statistics per channel over every other axis; no centering, no GroupScaling.
With t the training step counter (1 at the first training call), W_f/W_b the forward/backward
windows (``window`` = W or (W_f, W_b)), m = ``momentum`` (weight on the old value):

Forward (train):
1. x2 = per-channel mean of x^2 over the non-padding positions (``mask``).
2. recorded = unbiased variance over all W_f*C entries of sqrt(buffer_x2), taken before the
   insert; buffer_x2[t mod W_f] <- x2. Outlier filtration (``outlier_filtration`` and
   t >= warmup_steps): with AM / GM the per-channel arithmetic / geometric mean of the window,
   if AM - GM > W_f * recorded for ANY channel the batch is an outlier ("skip"): its buffer slot
   becomes running_var and ``skip_counter`` counts it. With W_f = 1 every step is a "skip".
3. var = x2 if t <= W_f or t < warmup_steps or skip, else the geometric mean of the window
   (fluctuation smoothing); z = x / sqrt(var + eps); y = scale * z + bias.
4. r = sqrt(var + eps) / sqrt(running_var + eps) with the OLD running_var, r = 1 if
   t <= max(1000, warmup_steps) or skip, else clipped to [1/5, 5] (gradient compensation);
   then running_var <- m * running_var + (1 - m) * var.

Backward (custom VJP; ``ema_gz`` and ``buffer_gz`` are ``GradStat``s updated here):
   g = r * scale * dL/dy;  gz = mean(g * z) over all positions (padding included);
   buffer_gz[t mod W_b] <- ema_gz if skip else gz;
   mean_gz = gz if t <= W_b or t < warmup_steps or skip, else the window mean of buffer_gz;
   ema_gz <- m * ema_gz + (1 - m) * mean_gz;
   x~ = g - mean_gz * z if skip else g - ema_gz * z  (the NEW ema_gz);
   dL/dx = x~ / sqrt(var + eps);  dL/dscale = sum(dL/dy * r * z);  dL/dbias = sum(dL/dy).

Eval: y = scale * x / sqrt(running_var + eps) + bias, a per-channel affine map, so it folds into
the adjacent linear layer (``surgery/folding.py``; the paper reports ~31% faster inference).

The windows (geometric mean forward; window mean then EMA backward), warmup, r and outlier
filtration are exactly the official code's; the paper describes the same method. Defaults
follow ``UN1d``: window 4, warmup 4000, no filtration (the docstring recommends it off for NLP,
on for vision; the official T2T-ViT uses True), eps 1e-5, momentum 0.9. The README's advice to
reset the step counter after loading pretrained weights applies to ``step`` here.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from normjax.norms import register
from normjax.norms.backward_state import backward_state_op
from normjax.norms.base import (
  AffineNorm,
  StatefulNorm,
  batch_axes,
  check_fraction,
  check_positive,
  check_steps,
  moments,
  stats_dtype,
)
from normjax.variables import GradStat

COMPENSATION_WARMUP = 1000  # r = 1 for the first max(1000, warmup_steps) steps (official)
COMPENSATION_CLIP = 5.0


def _forward(inputs, params, state, static):
  x, var, ratio, step, skip = inputs
  momentum, epsilon, warmup_steps = static
  z = x * jax.lax.rsqrt(var + epsilon)
  y = z * params["scale"] + params["bias"]
  return y, (z, var, ratio, step, skip, params["scale"])


def _backward(residuals, state, static, dy):
  z, var, ratio, step, skip, scale = residuals
  momentum, epsilon, warmup_steps = static
  axes = batch_axes(dy)
  window = state["buffer_gz"].shape[0]
  g = dy * scale * ratio
  gz = jnp.mean(g * z, axis=axes)
  ema = state["ema_gz"]
  buffer = state["buffer_gz"].at[step % window].set(jnp.where(skip, ema, gz))
  use_batch = (step <= window) | (step < warmup_steps) | skip
  mean_gz = jnp.where(use_batch, gz, jnp.mean(buffer, axis=0))
  new_ema = momentum * ema + (1 - momentum) * mean_gz
  approx = g - jnp.where(skip, mean_gz, new_ema) * z
  dx = approx * jax.lax.rsqrt(var + epsilon)
  dparams = {
    "scale": jnp.sum(dy * ratio * z, axis=axes).astype(scale.dtype),
    "bias": jnp.sum(dy, axis=axes).astype(scale.dtype),
  }
  return ((dx, None, None, None, None), dparams, {"ema_gz": new_ema, "buffer_gz": buffer})


_unified_op = backward_state_op(_forward, _backward)


def geometric_mean(values, axis=0):
  """exp(mean(log(values))), the official code's numerically stable geometric mean."""
  return jnp.exp(jnp.mean(jnp.log(values), axis=axis))


def unified_norm(
  x,
  params,
  state,
  *,
  train,
  mask=None,
  warmup_steps=4000,
  outlier_filtration=False,
  epsilon=1e-5,
  momentum=0.9,
):
  """Unified Normalization over the last axis; see the module docstring for the formulas.

  Args:
    x: ``(..., C)`` input; statistics over every axis but the last.
    params: ``{'scale', 'bias'}``, each ``(C,)``.
    state: ``{'running_var': (C,), 'ema_gz': (C,), 'buffer_x2': (W_f, C), 'buffer_gz':
      (W_b, C), 'step': int32 (), 'skip_counter': int32 ()}``; the windows are the buffer rows.
    train: windowed batch statistics, state update and the custom backward; else running_var.
    mask: bool, broadcastable to ``x.shape[:-1]``, True = real token (forward statistics only).

  Returns:
    ``(y, new_state)``, ``y`` in ``x.dtype``. ``ema_gz`` and ``buffer_gz`` are returned as given:
    their update is the cotangent of those state entries (``value_and_grad_with_backward_state``).
  """
  dtype = stats_dtype(x)
  h = x.astype(dtype)
  running_var = state["running_var"].astype(dtype)
  if not train:
    y = h * jax.lax.rsqrt(running_var + epsilon) * params["scale"] + params["bias"]
    return y.astype(x.dtype), state
  window = state["buffer_x2"].shape[0]
  step = state["step"] + 1
  x2 = jax.lax.stop_gradient(moments(h, batch_axes(h), mask, center=False)[1]).reshape(-1)
  old_buffer = state["buffer_x2"].astype(dtype)
  slot = step % window
  buffer = old_buffer.at[slot].set(x2)
  outlier = jnp.zeros((), bool)
  if outlier_filtration:
    recorded = jnp.var(jnp.sqrt(old_buffer), ddof=1)
    spread = jnp.mean(buffer, axis=0) - geometric_mean(buffer)
    outlier = (step >= warmup_steps) & jnp.any(spread > window * recorded)
    buffer = jnp.where(outlier, buffer.at[slot].set(running_var), buffer)
  skip = outlier | (window <= 1)
  use_batch = (step <= window) | (step < warmup_steps) | skip
  var = jnp.where(use_batch, x2, geometric_mean(buffer))
  ratio = jnp.sqrt(var + epsilon) / jnp.sqrt(running_var + epsilon)
  ratio = jnp.where(
    (step <= max(COMPENSATION_WARMUP, warmup_steps)) | skip,
    1.0,
    jnp.clip(ratio, 1 / COMPENSATION_CLIP, COMPENSATION_CLIP),
  )
  y = _unified_op(
    (h, var, ratio, step, skip),
    {"scale": params["scale"], "bias": params["bias"]},
    {"ema_gz": state["ema_gz"], "buffer_gz": state["buffer_gz"]},
    (momentum, epsilon, warmup_steps),
  )
  new_state = dict(state)
  new_state.update(
    running_var=(momentum * running_var + (1 - momentum) * var).astype(state["running_var"].dtype),
    buffer_x2=buffer.astype(state["buffer_x2"].dtype),
    step=step,
    skip_counter=state["skip_counter"] + outlier.astype(state["skip_counter"].dtype),
  )
  return y.astype(x.dtype), new_state


def _windows(window) -> tuple[int, int]:
  pair = (window, window) if isinstance(window, int) else tuple(window)
  if len(pair) != 2 or not all(
    isinstance(w, int) and not isinstance(w, bool) and w >= 1 for w in pair
  ):
    raise ValueError(
      f"unifiednorm window={window!r}: must be an integer >= 1 or a pair "
      f"(forward_window, backward_window) of them"
    )
  return pair


@register("unifiednorm")
class UnifiedNorm(StatefulNorm, AffineNorm):
  """Unified Normalization module (``unified_norm``).

  Variables: ``scale``, ``bias`` (params); ``running_var``, ``buffer_x2``, ``step``,
  ``skip_counter`` (``nnx.BatchStat``); ``ema_gz``, ``buffer_gz`` (``GradStat``: updated by the
  backward pass).

  Args:
    num_features: channels C (last axis).
    window: int, or (forward, backward) window sizes, in steps.
    warmup_steps: steps of plain batch statistics (official default 4000).
    outlier_filtration: the adaptive outlier test (official: False for NLP, True for vision).
    epsilon: added to the quadratic mean. momentum: EMA weight on the old value.
    use_running_average: eval mode (``model.eval()`` sets it).
  """

  uses_batch_statistics = True
  state_variables = ("running_var", "buffer_x2", "step", "skip_counter")
  grad_stat_variables = ("ema_gz", "buffer_gz")
  function = staticmethod(unified_norm)

  def __init__(
    self,
    num_features: int,
    *,
    window: int | tuple[int, int] = 4,
    warmup_steps: int = 4000,
    outlier_filtration: bool = False,
    epsilon: float = 1e-5,
    momentum: float = 0.9,
    use_running_average: bool = False,
    rngs: nnx.Rngs | None = None,
  ):
    del rngs
    forward_window, backward_window = _windows(window)
    check_positive("epsilon", epsilon)
    check_fraction("momentum", momentum, "unifiednorm")
    check_steps("warmup_steps", warmup_steps, "unifiednorm")
    super().__init__(num_features)
    self.window = (forward_window, backward_window)
    self.warmup_steps, self.outlier_filtration = warmup_steps, bool(outlier_filtration)
    self.epsilon, self.momentum = epsilon, momentum
    self.use_running_average = use_running_average
    zeros = lambda *shape: jnp.zeros(shape, jnp.float32)
    self.running_var = nnx.BatchStat(jnp.ones((num_features,), jnp.float32))
    self.buffer_x2 = nnx.BatchStat(zeros(forward_window, num_features))
    self.ema_gz = GradStat(zeros(num_features))
    self.buffer_gz = GradStat(zeros(backward_window, num_features))
    self.step = nnx.BatchStat(jnp.zeros((), jnp.int32))
    self.skip_counter = nnx.BatchStat(jnp.zeros((), jnp.int32))

  def function_kwargs(self) -> dict:
    return {
      "warmup_steps": self.warmup_steps,
      "outlier_filtration": self.outlier_filtration,
      "epsilon": self.epsilon,
      "momentum": self.momentum,
    }

  def eval_affine(self):
    """(a, c) with eval output = a * x + c (``surgery/folding.py``)."""
    a = self.scale[...] * jax.lax.rsqrt(self.running_var[...] + self.epsilon)
    return a, self.bias[...]


__all__ = ["geometric_mean", "unified_norm", "UnifiedNorm"]
