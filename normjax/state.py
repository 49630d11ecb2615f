"""An NNX model as a graph definition plus two pure-dict pytrees.

The trainer keeps ``params`` (``nnx.Param`` leaves) and ``model_state`` (everything
else: running statistics, dropout RNG state) as nested dicts of arrays, so optax,
parameter labels and orbax see plain paths such as ``('blocks', 0, 'attn', 'qkv',
'kernel')``. PRNG key leaves are stored as raw ``key_data`` (uint32) so every
checkpoint backend can write them. ``merge`` rebuilds a module inside a jitted function.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
from flax import nnx

from normjax.norms.backward_state import grad_stat_mask, value_and_grad_with_backward_state  # noqa: F401


def _is_key(x) -> bool:
  return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _to_dict(state: nnx.State) -> dict:
  return jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x,
                      nnx.to_pure_dict(state))


@dataclasses.dataclass(frozen=True)
class ModelDef:
  """Static description of a model: graphdefs for train and eval mode plus shapes."""
  train_graph: Any
  eval_graph: Any
  abstract_params: Any   # nnx.State of ShapeDtypeStructs
  abstract_rest: Any
  grad_stat_mask: Any    # bools over model_state: True where the backward pass updates it
  has_aux_loss: bool = False  # set by models that record AuxLoss (class attribute)

  @classmethod
  def create(cls, make: Callable[[nnx.Rngs], nnx.Module]) -> "ModelDef":
    model = nnx.eval_shape(lambda: make(nnx.Rngs(0)))
    model.train()
    train_graph, params, rest = nnx.split(model, nnx.Param, ...)
    model.eval()
    eval_graph, _, _ = nnx.split(model, nnx.Param, ...)
    return cls(train_graph, eval_graph, params, rest, grad_stat_mask(rest),
               bool(getattr(model, "has_aux_loss", False)))

  def merge(self, params: dict, model_state: dict, *, train: bool) -> nnx.Module:
    p = nnx.State(self.abstract_params)
    r = nnx.State(self.abstract_rest)
    nnx.replace_by_pure_dict(p, params)
    wrapped = jax.tree.map(
        lambda a, x: jax.random.wrap_key_data(x) if _is_key(a) else x,
        nnx.to_pure_dict(self.abstract_rest), model_state)
    nnx.replace_by_pure_dict(r, wrapped)
    return nnx.merge(self.train_graph if train else self.eval_graph, p, r)


def split(model: nnx.Module) -> tuple[dict, dict]:
  """``(params, model_state)`` of a module as pure dicts (keys as key_data)."""
  _, params, rest = nnx.split(model, nnx.Param, ...)
  return _to_dict(params), _to_dict(rest)


class AuxLoss(nnx.Intermediate):
  """A scalar loss term a layer records during its training forward, already weighted.

  The trainer pops every ``AuxLoss`` after the forward and adds their sum to the loss
  (e.g. the residual-std loss of LayerNorm removal); it never enters the model state.
  """


def pop_aux_loss(model: nnx.Module):
  """Removes the model's ``AuxLoss`` values and returns their sum (0.0 if none)."""
  values = jax.tree.leaves(nnx.pop(model, AuxLoss))
  return sum((v.sum() for v in values), start=jax.numpy.zeros((), jax.numpy.float32))
