"""PowerNorm (Shen, Yao, Gholami, Mahoney, Keutzer; ICML 2020), as sIncerass/powernorm.

Official code: ``sIncerass/powernorm:fairseq/modules/norms/mask_powernorm.py`` (MaskPowerNorm,
GroupScaling1D, PowerFunction). Channels-last input ``(..., C)``; statistics are per channel over
every other axis (batch and positions). With ``t`` the training step counter (1 at the first
training call), ``psi2`` the batch quadratic mean and ``running_phi`` its running estimate:

1. GroupScaling (always, train and eval; an ordinary differentiable op): split C into ``groups``
   groups of C/G channels and divide each token's group by sqrt(mean_group(x^2) + 1e-5). Its eps
   is fixed at 1e-5 (not ``epsilon``). The transformer configs set ``groups`` = attention heads,
   as the official ``NormSelect`` does. It is absent from the paper's Algorithm 1 (the authors
   add it "for stabilizing training", sIncerass/powernorm issues #8, #9).
2. psi2 = mean of x^2 per channel over the non-padding positions (``mask``); no centering.
3. Forward: z = x / sqrt(psi2 + eps) while t <= warmup_steps, afterwards
   z = x / sqrt(running_phi + eps) with running_phi from BEFORE this step; y = scale * z + bias.
4. Running statistic: if t < warmup_steps, first the cumulative mean
   running_phi <- running_phi * (t-1)/t + psi2/t; then always the EMA
   running_phi <- alpha_fwd * running_phi + (1 - alpha_fwd) * psi2.
5. Backward ("approximate backpropagation", custom VJP), with g = scale * dL/dy and
   s = ``ema_gz``:  x~ = g - (1 - alpha_bkw) * s * z;  s <- s + mean(x~ * z);
   dL/dx = x~ / sqrt(psi2 + eps);  dL/dscale = sum(dL/dy * z);  dL/dbias = sum(dL/dy).
   No gradient flows through psi2 or running_phi. With nu = (1 - alpha_bkw) * s this is the
   paper's nu <- nu (1 - (1-alpha) Gamma) + (1-alpha) Lambda, Gamma = mean(z^2),
   Lambda = mean(g z).
6. Eval: GroupScaling, then y = scale * x / sqrt(running_phi + eps) + bias.

Deviations of the official code from the paper (kept here, as the official code does them):
(a) the backward divides by the current batch psi2, not the running statistic; (b) the first
``warmup_steps`` steps use pure batch statistics; (c) GroupScaling; (d) statistics exclude
padding, the backward means include it; (e) during warmup the cumulative mean AND the EMA are
both applied in the same step (sIncerass/powernorm issue #15). Under data-parallel ``jax.jit``
every mean over the batch is a global mean (XLA inserts the all-reduce), so every device holds
the same statistics.

State: ``running_phi`` (C,) init 1 and ``step`` (int32) are forward state (``nnx.BatchStat``);
``ema_gz`` (C,) init 0 is updated by the backward pass (``normjax.variables.GradStat``, see
``normjax.norms.backward_state``): ``power_norm`` returns it unchanged and its update leaves the
backward pass as the cotangent of ``state['ema_gz']``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from normjax.norms import register
from normjax.norms.backward_state import backward_state_op
from normjax.norms.base import (
  AffineNorm,
  Norm,
  StatefulNorm,
  batch_axes,
  check_fraction,
  check_positive,
  check_steps,
  moments,
  stats_dtype,
)
from normjax.variables import GradStat

GROUP_SCALING_EPSILON = 1e-5  # hard-wired in GroupScaling1D


def group_scaling(x, groups: int, epsilon: float = GROUP_SCALING_EPSILON):
  """x / sqrt(mean over each group of C/groups channels of x^2 + epsilon), per token."""
  channels = x.shape[-1]
  if groups <= 0 or channels % groups:
    raise ValueError(
      f"powernorm groups={groups!r} must be a positive divisor of the {channels} channels"
    )
  grouped = x.reshape(*x.shape[:-1], groups, channels // groups)
  second_moment = jnp.mean(jnp.square(grouped), axis=-1, keepdims=True)
  return (grouped * jax.lax.rsqrt(second_moment + epsilon)).reshape(x.shape)


def _forward(inputs, params, state, static):
  x, forward_var, backward_var = inputs
  alpha_bkw, epsilon = static
  z = x * jax.lax.rsqrt(forward_var + epsilon)
  y = z * params["scale"] + params["bias"]
  return y, (z, backward_var, params["scale"])


def _backward(residuals, state, static, dy):
  z, backward_var, scale = residuals
  alpha_bkw, epsilon = static
  axes = batch_axes(dy)
  g = dy * scale
  approx = g - (1 - alpha_bkw) * state["ema_gz"] * z
  new_state = {"ema_gz": state["ema_gz"] + jnp.mean(approx * z, axis=axes)}
  dx = approx * jax.lax.rsqrt(backward_var + epsilon)
  dparams = {
    "scale": jnp.sum(dy * z, axis=axes).astype(scale.dtype),
    "bias": jnp.sum(dy, axis=axes).astype(scale.dtype),
  }
  return (dx, None, None), dparams, new_state


_power_op = backward_state_op(_forward, _backward)


def power_norm(
  x,
  params,
  state,
  *,
  train,
  mask=None,
  groups=1,
  epsilon=1e-5,
  alpha_fwd=0.9,
  alpha_bkw=0.9,
  warmup_steps=10000,
):
  """PowerNorm over the last axis; see the module docstring for the formulas.

  Args:
    x: ``(..., C)`` input; statistics over every axis but the last.
    params: ``{'scale', 'bias'}``, each ``(C,)``.
    state: ``{'running_phi': (C,), 'ema_gz': (C,), 'step': int32 ()}``.
    train: batch statistics, state update and the approximate backward; else running_phi.
    mask: bool, broadcastable to ``x.shape[:-1]``, True = real token (forward statistics only).

  Returns:
    ``(y, new_state)`` with ``y`` in ``x.dtype``. ``new_state['ema_gz']`` is the input value:
    its update is the cotangent of ``state['ema_gz']`` (``value_and_grad_with_backward_state``).
  """
  dtype = stats_dtype(x)
  h = group_scaling(x.astype(dtype), groups)
  if not train:
    y = h * jax.lax.rsqrt(state["running_phi"] + epsilon) * params["scale"] + params["bias"]
    return y.astype(x.dtype), state
  step = state["step"] + 1
  t = step.astype(dtype)
  psi2 = jax.lax.stop_gradient(moments(h, batch_axes(h), mask, center=False)[1])
  psi2 = psi2.reshape(-1)
  old_phi = state["running_phi"].astype(dtype)
  forward_var = jnp.where(step <= warmup_steps, psi2, old_phi)
  y = _power_op(
    (h, forward_var, psi2),
    {"scale": params["scale"], "bias": params["bias"]},
    {"ema_gz": state["ema_gz"]},
    (alpha_bkw, epsilon),
  )
  phi = jnp.where(step < warmup_steps, old_phi * (t - 1) / t + psi2 / t, old_phi)
  phi = alpha_fwd * phi + (1 - alpha_fwd) * psi2
  new_state = {
    "running_phi": phi.astype(state["running_phi"].dtype),
    "ema_gz": state["ema_gz"],
    "step": step,
  }
  return y.astype(x.dtype), new_state


@register("powernorm")
class PowerNorm(StatefulNorm, AffineNorm):
  """PowerNorm module (``power_norm``); variables ``scale``, ``bias`` (params), ``running_phi``,
  ``step`` (``nnx.BatchStat``) and ``ema_gz`` (``GradStat``, updated by the backward pass).

  Args:
    num_features: channels C (last axis).
    groups: GroupScaling groups (the official transformer uses the number of heads).
    epsilon: added to the quadratic mean (GroupScaling's own eps stays 1e-5).
    alpha_fwd: EMA weight on the old running_phi. alpha_bkw: backward EMA constant.
    warmup_steps: training steps normalized with batch statistics (official default 10000;
      the official scripts set it to the LR warmup).
    use_running_average: eval mode (``model.eval()`` sets it).
  """

  uses_batch_statistics = True
  state_variables = ("running_phi", "step")
  grad_stat_variables = ("ema_gz",)
  function = staticmethod(power_norm)

  def __init__(
    self,
    num_features: int,
    *,
    groups: int = 1,
    epsilon: float = 1e-5,
    alpha_fwd: float = 0.9,
    alpha_bkw: float = 0.9,
    warmup_steps: int = 10000,
    use_running_average: bool = False,
    rngs: nnx.Rngs | None = None,
  ):
    del rngs
    check_positive("epsilon", epsilon)
    check_fraction("alpha_fwd", alpha_fwd, "powernorm")
    check_fraction("alpha_bkw", alpha_bkw, "powernorm")
    check_steps("warmup_steps", warmup_steps, "powernorm")
    if not isinstance(groups, int) or groups <= 0 or num_features % groups:
      raise ValueError(
        f"powernorm groups={groups!r} must be a positive divisor of "
        f"num_features={num_features} (the transformer configs use the heads)"
      )
    super().__init__(num_features)
    self.groups, self.epsilon, self.warmup_steps = groups, epsilon, warmup_steps
    self.alpha_fwd, self.alpha_bkw = alpha_fwd, alpha_bkw
    self.use_running_average = use_running_average
    self.running_phi = nnx.BatchStat(jnp.ones((num_features,), jnp.float32))
    self.ema_gz = GradStat(jnp.zeros((num_features,), jnp.float32))
    self.step = nnx.BatchStat(jnp.zeros((), jnp.int32))

  def function_kwargs(self) -> dict:
    return {
      "groups": self.groups,
      "epsilon": self.epsilon,
      "alpha_fwd": self.alpha_fwd,
      "alpha_bkw": self.alpha_bkw,
      "warmup_steps": self.warmup_steps,
    }

  def eval_affine(self):
    """(a, c) with eval output = a * group_scaling(x) + c (``surgery/folding.py``)."""
    a = self.scale[...] * jax.lax.rsqrt(self.running_phi[...] + self.epsilon)
    return a, self.bias[...]


class GroupScaling(Norm):
  """PowerNorm's parameter-free GroupScaling step alone: what remains of a PowerNorm after its
  eval affine map is folded into the next linear layer (``surgery/folding.py``)."""

  def __init__(self, num_features: int, groups: int):
    super().__init__(num_features)
    self.groups = groups

  def __call__(self, x, mask=None):
    return group_scaling(x.astype(stats_dtype(x)), self.groups).astype(x.dtype)


__all__ = ["group_scaling", "power_norm", "PowerNorm", "GroupScaling"]
