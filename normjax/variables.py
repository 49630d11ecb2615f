"""Variable kinds that layers create and the train step treats specially (imports flax only).

* ``GradStat``: a statistic that a layer's BACKWARD pass updates (PowerNorm's and Unified
  Normalization's ``ema_gz``). It enters the layer's ``jax.custom_vjp`` op as an input and
  its update leaves as that input's cotangent (``normjax.norms.backward_state``); the train
  step adds the update to the model state (``normjax.state.value_and_grad_with_backward_state``)
  and never shows it to the optimizer. A subclass of ``nnx.BatchStat``, so code that treats
  batch statistics as non-trainable state (sharding rules, checkpoints) keeps working.
* ``AuxLoss``: a scalar loss term a layer records during its training forward, already
  weighted (FakeLN's residual-std loss). The train step pops every one after the forward
  (``normjax.state.pop_aux_loss``) and adds their sum to the loss; it never enters the model
  state. A module that records one sets the trait ``records_aux_loss = True``.

Layers (``normjax.norms``) and the train step (``normjax.state``) both import this leaf module,
so neither depends on the other.
"""

from flax import nnx


class GradStat(nnx.BatchStat):
  """A statistic updated by a layer's backward pass (see the module docstring)."""


class AuxLoss(nnx.Intermediate):
  """A weighted scalar loss term recorded in a training forward (see the module docstring)."""


__all__ = ["GradStat", "AuxLoss"]
