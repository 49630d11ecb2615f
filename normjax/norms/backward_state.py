"""State that a layer updates in its BACKWARD pass, carried out through a cotangent.

PowerNorm (Shen et al. 2020) and Unified Normalization (Yang et al. 2022) keep a running
statistic of the gradient (``ema_gz``; UN also a window of them) that their custom backward
both uses and updates. JAX has no mutable state in a VJP, so the state enters the
``jax.custom_vjp`` op as an ordinary input, and the backward returns, as that input's
"cotangent", the UPDATE ``new_state - state``. Whoever differentiates the loss with respect
to the state then holds the update: ``new = state + grad``.

* Layers store such state in ``normjax.variables.GradStat`` variables (a subclass of
  ``nnx.BatchStat``, so code that treats batch statistics as non-trainable state keeps working).
* ``backward_state_op(forward, backward)`` (here) builds the custom_vjp op the layers call.
* The train step's side -- ``grad_stat_mask`` and ``value_and_grad_with_backward_state``:
  gradients for the parameters, the updated backward state written back into the model state,
  never seen by the optimizer -- lives with the train step, beside ``ModelDef`` (``state.py``).

Under data-parallel ``jax.jit`` the batch means inside ``backward`` are global means (XLA
inserts the all-reduce), so every device computes the same update. The update form (rather
than the new value) keeps an op that did not run in a step from zeroing its state.
"""

from __future__ import annotations

from typing import Callable

import jax

from normjax.variables import GradStat


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


__all__ = ["GradStat", "backward_state_op"]
