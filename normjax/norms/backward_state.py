"""State that a layer updates in its BACKWARD pass, carried out through a cotangent.

PowerNorm (Shen et al. 2020) and Unified Normalization (Yang et al. 2022) keep a running
statistic of the gradient (``ema_gz``; UN also a window of them) that their custom backward
both uses and updates. JAX has no mutable state in a VJP, so the state enters the
``jax.custom_vjp`` op as an ordinary input, and the backward returns, as that input's
"cotangent", the UPDATE ``new_state - state``. Whoever differentiates the loss with respect
to the state then holds the update: ``new = state + grad``.

* Layers store such state in ``GradStat`` variables (a subclass of ``nnx.BatchStat`` so any
  code that treats batch statistics as non-trainable state keeps working).
* ``backward_state_op(forward, backward)`` builds the custom_vjp op.
* ``value_and_grad_with_backward_state`` is what the trainer's step calls: gradients for the
  parameters, and the updated backward state written back into the model state, never
  seen by the optimizer.

Under data-parallel ``jax.jit`` the batch means inside ``backward`` are global means (XLA
inserts the all-reduce), so every device computes the same update. The update form (rather
than the new value) keeps an op that did not run in a step from zeroing its state.
"""
from __future__ import annotations

from typing import Callable

import jax
from flax import nnx


class GradStat(nnx.BatchStat):
  """A statistic updated by a layer's backward pass (see the module docstring)."""


def backward_state_op(forward: Callable, backward: Callable) -> Callable:
  """A ``jax.custom_vjp`` op ``op(x, params, state, static) -> y``.

  Args:
    forward: ``forward(x, params, state, static) -> (y, residuals)``; ``static`` is a
      hashable of Python values (flags, step-dependent choices are arrays in ``state``).
    backward: ``backward(residuals, state, static, dy) -> (dx, dparams, new_state)``.

  The op's cotangent for ``state`` is ``new_state - state``; ``params`` and ``x`` get
  ordinary cotangents.
  """
  @jax.custom_vjp
  def op(x, params, state, static):
    return forward(x, params, state, static)[0]

  def fwd(x, params, state, static):
    y, residuals = forward(x, params, state, static)
    return y, (residuals, state, static)

  def bwd(saved, dy):
    residuals, state, static = saved
    dx, dparams, new_state = backward(residuals, state, static, dy)
    update = jax.tree.map(lambda n, o: (n - o).astype(o.dtype), new_state, state)
    return dx, dparams, update, jax.tree.map(lambda _: None, static)

  op.defvjp(fwd, bwd)
  return op


def grad_stat_mask(abstract_state: nnx.State) -> dict:
  """A pure-dict tree of bools over a model's non-parameter state: True at ``GradStat``s."""
  flags = jax.tree.map(lambda v: isinstance(v, GradStat), abstract_state,
                       is_leaf=lambda v: isinstance(v, nnx.Variable))
  return flags.to_pure_dict() if hasattr(flags, "to_pure_dict") else nnx.to_pure_dict(flags)


def value_and_grad_with_backward_state(loss_fn: Callable, params, model_state, mask):
  """Differentiates ``loss_fn(params, model_state) -> (loss, (new_model_state, aux))``.

  Returns ``(loss, aux), grads, new_model_state``: ``grads`` for ``params`` only, and the
  model state as the forward left it plus, at the ``GradStat`` leaves (``mask``), the
  update that the backward pass carried out as their cotangent.
  """
  if not any(jax.tree.leaves(mask)):
    (loss, (new_state, aux)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        params, model_state)
    return (loss, aux), grads, new_state
  grad_stats = jax.tree.map(lambda m, x: x if m else None, mask, model_state)
  def loss_of(params, grad_stats):
    merged = jax.tree.map(lambda m, x, g: g if m else x, mask, model_state, grad_stats)
    return loss_fn(params, merged)
  (loss, (new_state, aux)), (grads, updates) = jax.value_and_grad(
      loss_of, argnums=(0, 1), has_aux=True)(params, grad_stats)
  new_state = jax.tree.map(lambda m, x, u: x + u if m else x, mask, new_state, updates)
  return (loss, aux), grads, new_state
