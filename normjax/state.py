"""An NNX model as a graph definition plus two pure-dict pytrees, and the train step's
gradient machinery.

The trainer keeps ``params`` (``nnx.Param`` leaves) and ``model_state`` (everything
else: running statistics, dropout RNG state) as nested dicts of arrays, so optax,
parameter labels and orbax see plain paths such as ``('blocks', 0, 'attn', 'qkv',
'kernel')``. PRNG key leaves are stored as raw ``key_data`` (uint32) so every
checkpoint backend can write them. ``merge`` rebuilds a module inside a jitted function.

Gradient machinery (the variable kinds are in ``normjax.variables``):

* ``grad_stat_mask`` / ``value_and_grad_with_backward_state``: ``GradStat`` leaves of the model
  state are differentiated alongside the parameters; their "gradient" is the update their
  layer's backward pass computed (``normjax.norms.backward_state.backward_state_op``), added
  to the state and kept from the optimizer.
* ``pop_aux_loss``: the sum of the ``AuxLoss`` terms layers recorded in a training forward.
  ``ModelDef.has_aux_loss`` says whether a model can record any: True when a node of the
  model graph (the model itself included) has the trait ``records_aux_loss``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
from flax import nnx

from normjax.variables import AuxLoss, GradStat


def _is_key(x) -> bool:
  return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _to_dict(state: nnx.State) -> dict:
  return jax.tree.map(
    lambda x: jax.random.key_data(x) if _is_key(x) else x, nnx.to_pure_dict(state)
  )


@dataclasses.dataclass(frozen=True)
class ModelDef:
  """Static description of a model: graphdefs for train and eval mode plus shapes."""

  train_graph: Any
  eval_graph: Any
  abstract_params: Any  # nnx.State of ShapeDtypeStructs
  abstract_rest: Any
  grad_stat_mask: Any  # bools over model_state: True where the backward pass updates it
  has_aux_loss: bool = False  # some node of the graph has ``records_aux_loss``

  @classmethod
  def create(cls, make: Callable[[nnx.Rngs], nnx.Module]) -> "ModelDef":
    model = nnx.eval_shape(lambda: make(nnx.Rngs(0)))
    model.train()
    train_graph, params, rest = nnx.split(model, nnx.Param, ...)
    model.eval()
    eval_graph, _, _ = nnx.split(model, nnx.Param, ...)
    return cls(train_graph, eval_graph, params, rest, grad_stat_mask(rest), records_aux_loss(model))

  def merge(self, params: dict, model_state: dict, *, train: bool) -> nnx.Module:
    p = nnx.State(self.abstract_params)
    r = nnx.State(self.abstract_rest)
    nnx.replace_by_pure_dict(p, params)
    wrapped = jax.tree.map(
      lambda a, x: jax.random.wrap_key_data(x) if _is_key(a) else x,
      nnx.to_pure_dict(self.abstract_rest),
      model_state,
    )
    nnx.replace_by_pure_dict(r, wrapped)
    return nnx.merge(self.train_graph if train else self.eval_graph, p, r)


def split(model: nnx.Module) -> tuple[dict, dict]:
  """``(params, model_state)`` of a module as pure dicts (keys as key_data)."""
  _, params, rest = nnx.split(model, nnx.Param, ...)
  return _to_dict(params), _to_dict(rest)


def records_aux_loss(model: nnx.Module) -> bool:
  """Whether any node of ``model``'s graph (itself included) has ``records_aux_loss`` set.

  The trait is declared on ``normjax.norms.base.Norm``; any other module that records an
  ``AuxLoss`` sets it too. Plain layers (``nnx.Linear``, ...) do not have it: False.
  """
  return any(
    bool(getattr(node, "records_aux_loss", False))
    for _, node in nnx.iter_graph(model)
    if isinstance(node, nnx.Module)
  )


def pop_aux_loss(model: nnx.Module):
  """Removes the model's ``AuxLoss`` values and returns their sum (0.0 if none)."""
  values = jax.tree.leaves(nnx.pop(model, AuxLoss))
  return sum((v.sum() for v in values), start=jax.numpy.zeros((), jax.numpy.float32))


def grad_stat_mask(abstract_state: nnx.State) -> dict:
  """A pure-dict tree of bools over a model's non-parameter state: True at ``GradStat``s."""
  flags = jax.tree.map(
    lambda v: isinstance(v, GradStat), abstract_state, is_leaf=lambda v: isinstance(v, nnx.Variable)
  )
  return flags.to_pure_dict() if hasattr(flags, "to_pure_dict") else nnx.to_pure_dict(flags)


def value_and_grad_with_backward_state(loss_fn: Callable, params, model_state, mask):
  """Differentiates ``loss_fn(params, model_state) -> (loss, (new_model_state, aux))``.

  Returns ``(loss, aux), grads, new_model_state``: ``grads`` for ``params`` only, and the
  model state as the forward left it plus, at the ``GradStat`` leaves (``mask``), the
  update that the backward pass carried out as their cotangent.
  """
  if not any(jax.tree.leaves(mask)):
    (loss, (new_state, aux)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, model_state)
    return (loss, aux), grads, new_state
  grad_stats = jax.tree.map(lambda m, x: x if m else None, mask, model_state)

  def loss_of(params, grad_stats):
    merged = jax.tree.map(lambda m, x, g: g if m else x, mask, model_state, grad_stats)
    return loss_fn(params, merged)

  (loss, (new_state, aux)), (grads, updates) = jax.value_and_grad(
    loss_of, argnums=(0, 1), has_aux=True
  )(params, grad_stats)
  new_state = jax.tree.map(lambda m, x, u: x + u if m else x, mask, new_state, updates)
  return (loss, aux), grads, new_state
