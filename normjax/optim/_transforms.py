"""Pieces shared by normjax's optimizers: mask resolution, arithmetic dtype, decay after step.

* ``resolve_mask`` / ``bool_mask``: the one way every mask-like argument (``weight_decay_mask``,
  ``conda_mask``, NaP's ``mask``) is read: None (a default), a ``labels.LABELS`` name,
  ``fn(params)``, or a pytree with the structure of params (or a prefix of it, whose
  values then apply to whole subtrees).
* ``compute_dtype``: optimizer arithmetic runs in the wider of float32 and the leaf's
  dtype: bfloat16/float16 leaves get float32 statistics, float64 leaves stay float64.
* ``add_decayed_weights_after_step``: decoupled weight decay applied after the step
  (HF ``AdamW`` and Conda), as an optax transform.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from normjax.optim import labels


def _is_mask_leaf(x) -> bool:
  """Values of a mask tree: bools, None, and dimension numbers (``MatrixAxes`` and the
  like, e.g. ``optax.contrib.MuonDimensionNumbers``), which are NamedTuples."""
  return (
    x is None
    or isinstance(x, (bool, labels.MatrixAxes))
    or (hasattr(x, "reduction_axis") and hasattr(x, "output_axis"))
  )


def resolve_mask(mask: Any, params, *, name: str, default: Callable | None = None):
  """A mask argument's value at every leaf of ``params``, as a tree of params' structure.

  Args:
    mask: None (``default(params)``; every leaf True when ``default`` is None too), a
      ``labels.LABELS`` name, ``fn(params)``, or a tree with params' structure or a prefix
      of it. Leaves are bools, None or dimension numbers.
    params: the parameter (or update) tree; only its structure and shapes are read.
    name: the argument's name, for error messages.
    default: what None means.

  Returns:
    A tree with params' structure whose leaves are the mask's values (possibly None).
  """
  if mask is None:
    mask = default if default is not None else (lambda p: jax.tree.map(lambda _: True, p))
  mask = labels.resolve(mask)
  if callable(mask):
    mask = mask(params)
  try:
    return jax.tree.map(
      lambda value, subtree: jax.tree.map(lambda _: value, subtree),
      mask,
      params,
      is_leaf=_is_mask_leaf,
    )
  except (ValueError, TypeError) as e:
    raise ValueError(f"{name} must have the structure of params (or a prefix of it): {e}") from None


def bool_mask(mask: Any, params, *, name: str, default: Callable | None = None):
  """``resolve_mask`` as Python bools (None -> False), e.g. for ``optax.masked``."""
  values = resolve_mask(mask, params, name=name, default=default)
  return jax.tree.map(lambda _, value: bool(value) if value is not None else False, params, values)


def masked(inner: optax.GradientTransformation, mask: Any, *, name: str):
  """``optax.masked(inner, mask)`` with ``mask`` read by ``bool_mask``; None: unmasked."""
  if mask is None:
    return inner
  return optax.masked(inner, lambda params: bool_mask(mask, params, name=name))


def compute_dtype(*arrays) -> jnp.dtype:
  """The wider of float32 and the arrays' dtype (float64 stays float64)."""
  return jnp.promote_types(jnp.float32, jnp.result_type(*(x.dtype for x in arrays)))


def unzip(tree, outputs, n: int):
  """``n`` trees from ``outputs``, a tree with ``tree``'s structure holding per-leaf
  ``n``-tuples (the result of one per-leaf ``jax.tree.map``)."""
  return tuple(jax.tree.map(lambda _, out: out[i], tree, outputs) for i in range(n))


def require_params(params, name: str):
  if params is None:
    raise ValueError(f"{name}.update needs params: call update(grads, state, params)")


def check_nonnegative(**values):
  for name, value in values.items():
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0:
      raise ValueError(f"{name}={value!r}: must be >= 0")


class DecayAfterStepState(NamedTuple):
  count: jax.Array  # int32 scalar, for a learning-rate schedule


def add_decayed_weights_after_step(
  weight_decay: float, learning_rate: optax.ScalarOrSchedule, mask: Any = None
) -> optax.GradientTransformation:
  """Decoupled weight decay of the weights AFTER the step, as HF AdamW and Conda do.

  ``W <- (W - lr d)(1 - lr wd)`` is ``W - lr (d + wd (W - lr d))``: this transform maps
  ``d`` to ``d + wd (W - lr_t d)`` and ``scale_by_learning_rate`` supplies the outer
  ``-lr``. ``mask``: bool pytree, ``fn(params)`` or a ``labels.LABELS`` name (None: all).
  """

  def init_fn(params):
    del params
    return DecayAfterStepState(count=jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError("weight decay needs params: call update(grads, state, params)")
    count = optax.safe_increment(state.count)
    if isinstance(weight_decay, (int, float)) and weight_decay == 0:
      return updates, DecayAfterStepState(count=count)
    lr = learning_rate(state.count) if callable(learning_rate) else learning_rate

    def decay(d, p):
      dtype = compute_dtype(d, p)
      wd, lr_t = jnp.asarray(weight_decay, dtype), jnp.asarray(lr, dtype)
      d_wide = d.astype(dtype)
      return (d_wide + wd * (p.astype(dtype) - lr_t * d_wide)).astype(d.dtype)

    return jax.tree.map(decay, updates, params), DecayAfterStepState(count=count)

  return masked(optax.GradientTransformation(init_fn, update_fn), mask, name="weight_decay_mask")
