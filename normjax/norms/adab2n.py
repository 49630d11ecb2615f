r"""AdaB²N: BatchNorm with task-weighted statistics and a modified momentum, for continual learning.

Lyu, Wang, Zhang, Sun, Su, Zhu, Jing, "Overcoming Recency Bias of Normalization Statistics in
Continual Learning: Balance and Adaptation", NeurIPS 2023 (arXiv 2310.08855); official code
``lvyilin/AdaB2N`` (``models/utils/adab2n.py``, class ``AdaB2N(BatchNorm2d)``, read at 9aaba7e;
the replay models feeding it are ``models/er_ace_ada.py`` / ``derpp_ada.py``).

Training forward, x channels-last ``(N, ..., C)``, per-example task ids t_i passed as the keyword
``task_ids`` (the official code sets them on every layer with ``set_counts`` before the
forward), T = ``seen_tasks`` (finished tasks, a state scalar; the official ``cur_tasks``
buffer, incremented by ``end_task``), learnable logits w (``task_logits``, one per task, init
``init_weight`` = 0), n_k = examples of task k in the batch (k <= T):

    c_k = exp(w_k) + n_k,  pi_k = c_k / sum_{j<=T} c_j,  omega_i = pi_{t_i} / n_{t_i}
    mu_c = sum_i omega_i mean_s x_{i,s,c},  sigma2_c = sum_i omega_i mean_s (x_{i,s,c} - mu_c)^2
    y = (x - mu) / sqrt(sigma2 + eps) * scale + bias

(s runs over the positions of one example). Gradients flow through mu and sigma2 into x and w.
Without task ids, or while T = 0, mu and sigma2 are the plain batch mean and population
variance (``normjax.norms.base.moments``, exactly as ``batchnorm``).

Running statistics with the modified momentum eta_n, n = training calls so far including this
one (``count``, a state scalar): r <- (1 - eta_n) r + eta_n * stat (stop-gradient). With m the
PyTorch momentum (m = 1 - ``momentum``; ``momentum`` is the flax weight on the OLD value, 0.9
as the official wrapped ``BatchNorm2d(momentum=0.1)``) and a = (1 - m)^kappa, the official
recursion eta_1 = m^kappa, eta_n = eta_{n-1} / (eta_{n-1} + a) has the closed form

    1 / eta_n = (1 - a^(n-1)) / (1 - a) + a^(n-1) / m^kappa,

computed here from ``count``: kappa = 1 gives eta = m (plain EMA), kappa = 0 gives eta = 1/n
(the cumulative mean of batch statistics). The schedule is never reset at task boundaries.

Auxiliary statistic loss (official ``self.loss``, added by the replay model with weight lambda):
l = mean_c (mu_c - r_mean_c)^2 + mean_c (sigma2_c - r_var_c)^2 against the UPDATED running
statistics (gradient through mu, sigma2 only). Recorded as ``normjax.variables.AuxLoss`` with
weight ``aux_loss_weight`` (lambda) in training calls while T >= ``aux_from_task``. The
official ER-ACE / DER++ models add it only once replay is active (task >= 1) and task >=
``ada_t0``; ``aux_from_task`` = max(1, ada_t0) = 1 is the official grid's ada_t0 in {0, 1}.

Eval: normalization with the running statistics.

Official choices kept by default, each with the corrected form as an option:

* the running variance stores the BIASED batch variance (PyTorch BN stores the unbiased one);
  ``unbiased_running_var=True`` stores sigma2 * m_eff / (m_eff - 1), m_eff = N * S for plain
  statistics (S positions per example) and S * (sum omega)^2 / sum omega^2 (Kish's effective
  sample size) for weighted ones;
* when a seen task is absent from the batch, sum_i omega_i = sum_{k present} pi_k < 1 and mu is
  shrunk toward 0; ``renormalize_weights=True`` divides omega by its sum.

Fixed here, not options: the official eta lives in a Python attribute (``last_eta``) that is
not in the state_dict, so a resumed run restarts eta at m^kappa; here eta is a function of the
checkpointed ``count``, so resume is exact. Task ids are an explicit call argument, not state
set on each module. Any channels-last rank is handled (the official layer is 4-D only).

Task ids must lie in [0, num_tasks) and not exceed T (the official code fails indexing its
T+1 count vector otherwise). Concrete ids are checked and refused with the value named; under
``jax.jit`` ids above T get weight 0 and ids outside [0, num_tasks) are clipped by XLA.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from normjax.norms import register
from normjax.norms.base import (
  TORCH_MOMENTUM,
  AffineNorm,
  StatefulNorm,
  batch_axes,
  check_fraction,
  check_positive,
  check_steps,
  moments,
  normalize,
  stats_dtype,
)
from normjax.variables import AuxLoss

ADAB2N_MOMENTUM = 0.9  # the official wrapped BatchNorm2d(momentum=0.1), flax convention


def modified_momentum(count, momentum: float, kappa: float):
  """eta_n, the weight on the NEW statistic at training call ``count`` = n >= 1 (closed form).

  kappa = 1 returns the Python float 1 - momentum (so the update is bit-identical to
  ``batch_norm``'s); otherwise an array in float32 (float64 when enabled).
  """
  if kappa == 1.0:
    return 1.0 - momentum
  n = jnp.asarray(count).astype(jnp.promote_types(jnp.float32, jnp.result_type(float)))
  if kappa == 0.0:
    return 1.0 / n
  a = momentum**kappa
  first = (1.0 - momentum) ** kappa
  a_pow = jnp.power(a, n - 1.0)
  return 1.0 / ((1.0 - a_pow) / (1.0 - a) + a_pow / first)


def task_weights(task_ids, logits, seen_tasks, *, renormalize: bool = False):
  """Per-example weights omega (N,) from task ids, logits w and T = ``seen_tasks``."""
  num_tasks = logits.shape[0]
  seen = jnp.arange(num_tasks) <= seen_tasks
  counts = jnp.zeros((num_tasks,), logits.dtype).at[task_ids].add(1.0)
  counts = jnp.where(seen, counts, 0.0)
  concentration = jnp.where(seen, jnp.exp(logits) + counts, 0.0)
  pi = concentration / jnp.sum(concentration)
  omega = pi[task_ids] / jnp.maximum(counts[task_ids], 1.0)
  if renormalize:
    omega = omega / jnp.sum(omega)
  return omega


def weighted_moments(x, omega):
  """mu = sum_i omega_i mean_s x_i and sigma2 = sum_i omega_i mean_s (x_i - mu)^2, shape (C,)."""
  x = x.astype(stats_dtype(x))
  omega = omega.astype(x.dtype)
  flat = x.reshape(x.shape[0], -1, x.shape[-1])  # (N, S, C)
  mean = jnp.einsum("n,nc->c", omega, jnp.mean(flat, 1))
  var = jnp.einsum("n,nc->c", omega, jnp.mean(jnp.square(flat - mean), 1))
  return mean, var


def _check_task_ids(task_ids, x, num_tasks, seen_tasks):
  if task_ids.ndim != 1 or task_ids.shape[0] != x.shape[0]:
    raise ValueError(
      f"adab2n task_ids of shape {task_ids.shape}: needs one id per example, shape "
      f"({x.shape[0]},) for input {x.shape}"
    )
  if not jnp.issubdtype(task_ids.dtype, jnp.integer):
    raise ValueError(f"adab2n task_ids of dtype {task_ids.dtype}: must be integers")
  if isinstance(task_ids, jax.core.Tracer):
    return
  ids = np.asarray(task_ids)
  bad = ids[(ids < 0) | (ids >= num_tasks)]
  if bad.size:
    raise ValueError(
      f"adab2n task id {int(bad[0])}: out of range [0, {num_tasks}) (num_tasks={num_tasks})"
    )
  if not isinstance(seen_tasks, jax.core.Tracer) and ids.max(initial=0) > int(seen_tasks):
    raise ValueError(
      f"adab2n task id {int(ids.max())}: above seen_tasks={int(seen_tasks)} (the tasks "
      f"finished so far; the current task is {int(seen_tasks)}); call end_task() at each "
      f"task boundary"
    )


def adab2n(
  x,
  params,
  state,
  *,
  train,
  mask=None,
  task_ids=None,
  kappa: float = 1.0,
  momentum: float = ADAB2N_MOMENTUM,
  epsilon: float = 1e-5,
  renormalize_weights: bool = False,
  unbiased_running_var: bool = False,
):
  """AdaB²N over every axis but the last (see the module docstring).

  Args:
    x: ``(N, ..., C)``. params: ``{'scale', 'bias', 'task_logits'}`` (scale/bias optional).
    state: ``{'mean', 'var'}`` (C,), ``{'count', 'seen_tasks'}`` int32 scalars.
    task_ids: int ``(N,)`` or None (plain batch statistics).

  Returns:
    ``(y, new_state)``; in training ``new_state`` also holds ``stat_loss``, the unweighted
    auxiliary loss l (not a state variable).
  """
  if not train:
    return normalize(x, state["mean"], state["var"], params, epsilon), state
  seen_tasks = state["seen_tasks"]
  mean, var = moments(x, batch_axes(x), mask)
  mean, var = mean.reshape(-1), var.reshape(-1)
  positions = int(np.prod(x.shape[1:-1], dtype=np.int64))
  if mask is None:
    effective = jnp.asarray(x.shape[0] * positions, mean.dtype)
  else:
    effective = jnp.sum(jnp.broadcast_to(jnp.asarray(mask, bool), x.shape[:-1]), dtype=mean.dtype)
  if task_ids is not None:
    if mask is not None:
      raise ValueError("adab2n: task_ids with a mask is not supported (pass mask=None)")
    task_ids = jnp.asarray(task_ids)
    logits = params["task_logits"]
    _check_task_ids(task_ids, x, logits.shape[0], seen_tasks)
    omega = task_weights(task_ids, logits, seen_tasks, renormalize=renormalize_weights)
    w_mean, w_var = weighted_moments(x, omega)
    weighted = seen_tasks > 0
    mean, var = jnp.where(weighted, w_mean, mean), jnp.where(weighted, w_var, var)
    kish = positions * jnp.square(jnp.sum(omega)) / jnp.sum(jnp.square(omega))
    effective = jnp.where(weighted, kish.astype(mean.dtype), effective)
  stored_var = var * effective / jnp.maximum(effective - 1, 1e-12) if unbiased_running_var else var
  count = state["count"] + 1
  eta = modified_momentum(count, momentum, kappa)
  keep = momentum if kappa == 1.0 else 1 - eta
  update = lambda old, new: jax.lax.stop_gradient(
    (keep * old + eta * new.reshape(old.shape).astype(old.dtype)).astype(old.dtype)
  )
  new_mean, new_var = update(state["mean"], mean), update(state["var"], stored_var)
  stat_loss = jnp.mean(jnp.square(mean - new_mean)) + jnp.mean(jnp.square(stored_var - new_var))
  new_state = {
    "mean": new_mean,
    "var": new_var,
    "count": count,
    "seen_tasks": seen_tasks,
    "stat_loss": stat_loss,
  }
  return normalize(x, mean, var, params, epsilon), new_state


@register("adab2n")
class AdaB2N(StatefulNorm, AffineNorm):
  """AdaB²N module (see the module docstring); ``norm(x, mask=None, task_ids=None)``.

  Args:
    num_tasks: tasks of the stream (length of ``task_logits``).
    kappa: modified-momentum exponent in [0, 1] (1 = BatchNorm's EMA, 0 = cumulative mean).
    momentum: flax momentum in [0, 1) (weight on the old value; official 0.9).
    aux_loss_weight: lambda of the statistic loss (0 = not recorded).
    aux_from_task: the loss is recorded while seen_tasks >= this (official: 1).
    init_weight: initial task logits (official ``init_weight`` 0).
    renormalize_weights / unbiased_running_var: the corrected forms (module docstring).
  """

  uses_batch_statistics = True
  needs_task_ids = True
  state_variables = ("mean", "var", "count", "seen_tasks")
  function = staticmethod(adab2n)

  def __init__(
    self,
    num_features: int,
    *,
    num_tasks: int = 1,
    kappa: float = 1.0,
    momentum: float = ADAB2N_MOMENTUM,
    epsilon: float = 1e-5,
    aux_loss_weight: float = 0.0,
    aux_from_task: int = 1,
    init_weight: float = 0.0,
    renormalize_weights: bool = False,
    unbiased_running_var: bool = False,
    use_scale: bool = True,
    use_bias: bool = True,
    use_running_average: bool = False,
    rngs: nnx.Rngs | None = None,
  ):
    del rngs
    check_positive("epsilon", epsilon)
    check_fraction("kappa", kappa, "adab2n", "1 = BatchNorm's EMA, 0 = cumulative mean")
    check_fraction("momentum", momentum, "adab2n", TORCH_MOMENTUM)
    if momentum == 1.0:
      raise ValueError("adab2n momentum=1.0: must be < 1 (the running statistics never move)")
    if isinstance(num_tasks, bool) or not isinstance(num_tasks, int) or num_tasks < 1:
      raise ValueError(f"norm argument num_tasks={num_tasks!r}: must be an integer >= 1")
    check_steps("aux_from_task", aux_from_task, "adab2n")
    if not aux_loss_weight >= 0:
      raise ValueError(f"norm argument aux_loss_weight={aux_loss_weight!r}: must be >= 0")
    super().__init__(num_features, use_scale=use_scale, use_bias=use_bias)
    self.num_tasks, self.kappa, self.momentum, self.epsilon = num_tasks, kappa, momentum, epsilon
    self.aux_loss_weight, self.aux_from_task = aux_loss_weight, aux_from_task
    self.renormalize_weights, self.unbiased_running_var = renormalize_weights, unbiased_running_var
    self.records_aux_loss = aux_loss_weight > 0
    self.use_running_average = use_running_average
    self.task_logits = nnx.Param(jnp.full((num_tasks,), init_weight, jnp.float32))
    self.mean = nnx.BatchStat(jnp.zeros((num_features,), jnp.float32))
    self.var = nnx.BatchStat(jnp.ones((num_features,), jnp.float32))
    self.count = nnx.BatchStat(jnp.zeros((), jnp.int32))
    self.seen_tasks = nnx.BatchStat(jnp.zeros((), jnp.int32))

  def params(self):
    return {**super().params(), "task_logits": self.task_logits[...]}

  def function_kwargs(self) -> dict:
    return {
      "kappa": self.kappa,
      "momentum": self.momentum,
      "epsilon": self.epsilon,
      "renormalize_weights": self.renormalize_weights,
      "unbiased_running_var": self.unbiased_running_var,
    }

  def end_task(self):
    """Marks a task as finished (the official ``end_task``): T <- T + 1."""
    self.seen_tasks[...] = self.seen_tasks[...] + 1

  def __call__(self, x, mask=None, task_ids=None):
    y, new_state = self.run_with_state(x, mask, task_ids=task_ids)
    if self.records_aux_loss and not self.use_running_average:
      active = (new_state["seen_tasks"] >= self.aux_from_task).astype(jnp.float32)
      self.aux_loss = AuxLoss(self.aux_loss_weight * active * new_state["stat_loss"])
    return y


__all__ = [
  "ADAB2N_MOMENTUM",
  "modified_momentum",
  "task_weights",
  "weighted_moments",
  "adab2n",
  "AdaB2N",
]
