r"""Normalize-and-Project (NaP): keep chosen weights at their initial norm.

Lyle, Zheng, Khetarpal, Martens, van Hasselt, Pascanu, Dabney, "Normalization and
effective learning rates in reinforcement learning", NeurIPS 2024 (arXiv 2407.01800).
NaP inserts a normalization before every nonlinearity (a model choice) and, after each
optimizer step, projects each layer's weights back to their norm at initialization::

  W_l <- W_l' |W_l^(0)| / |W_l'|,     W_l' = W_l + update_l

so parameter-norm growth cannot decay the effective learning rate (lr / |W|^2 for
scale-invariant weights); the learning-rate schedule becomes explicit.

``normalize_and_project`` is the projection as an optax transform: it must be the LAST
element of a chain (it sees the final update, learning rate included) and needs
``params``. It returns ``projected - W``, so ``optax.apply_updates`` lands on the sphere.
Per layer (the paper's choice) by default; ``per_channel=True`` projects each output
channel (last axis of a Flax kernel) separately instead. Leaves whose initial norm is 0
(zero-initialised projections) are left unprojected: their target would freeze them.
The paper's treatment of the norm layers' own scale/offset is not reproduced; they are
outside the default mask.

``nap(learning_rate, base='adamw', ...)`` (registered as ``'nap'``) wraps any registered
optimizer: ``chain(OPTIMIZERS.get(base)(learning_rate, ...), normalize_and_project)``.

The projection acts on the weights only, never on the base optimizer's state (in the
paper it follows the optimizer step), so SGDP's question of a projection written into the
momentum buffer (``_sgdp.py``) does not arise here; ``nap(base='sgdp')`` inherits SGDP's
``project_momentum``. Norms are computed in the wider of float32 and the leaf's dtype.
"""

from typing import Any, NamedTuple, Union

import jax
import jax.numpy as jnp
import optax

from normjax.optim._registry import OPTIMIZERS, register
from normjax.optim._transforms import compute_dtype, masked, require_params


class NormalizeAndProjectState(NamedTuple):
  """Target norms: a scalar per leaf, or one per output channel with ``per_channel``."""

  count: jax.Array  # int32 scalar
  target_norms: optax.Updates


def _norms(x, per_channel: bool):
  x = x.astype(compute_dtype(x))
  if x.ndim < 2:
    return jnp.sqrt(jnp.sum(jnp.square(x)))
  per_column = jnp.sum(jnp.square(x), axis=tuple(range(x.ndim - 1)))
  if per_channel:
    return jnp.sqrt(per_column)
  # Summing the per-column sums (kept apart by the barrier) is several times faster on
  # XLA:CPU than one reduction of the whole leaf to a scalar.
  return jnp.sqrt(jnp.sum(jax.lax.optimization_barrier(per_column)))


def normalize_and_project(
  mask: Any = "decay", *, per_channel: bool = False
) -> optax.GradientTransformation:
  """Projects the chosen leaves back to their initial norm after the update.

  Args:
    mask: leaves to project: a ``labels.LABELS`` name, a bool pytree or ``fn(params)``;
      None projects every leaf. Default ``'decay'``: every leaf with ndim >= 2 outside
      norm layers. ``'scale_invariant'`` / ``labels.probe_scale_invariance`` give the
      weights directly followed by a normalization.
    per_channel: one norm per output channel instead of one per leaf.

  Returns:
    A transform whose ``update(updates, state, params)`` needs ``params``.
  """

  def init_fn(params):
    return NormalizeAndProjectState(
      count=jnp.zeros([], jnp.int32),
      target_norms=jax.tree.map(lambda x: _norms(x, per_channel), params),
    )

  def update_fn(updates, state, params=None):
    require_params(params, "normalize_and_project")

    def project(u, p, target):
      dtype = compute_dtype(u, p)
      new = p.astype(dtype) + u.astype(dtype)
      norm = _norms(new, per_channel)
      factor = jnp.where((target > 0) & (norm > 0), target / jnp.where(norm > 0, norm, 1.0), 1.0)
      return (new * factor - p.astype(dtype)).astype(u.dtype)

    new_updates = jax.tree.map(project, updates, params, state.target_norms)
    return new_updates, state._replace(count=optax.safe_increment(state.count))

  return masked(optax.GradientTransformation(init_fn, update_fn), mask, name="nap_mask")


@register("nap")
def nap(
  learning_rate: optax.ScalarOrSchedule,
  *,
  base: Union[str, optax.GradientTransformation] = "adamw",
  weight_decay: float = 0.0,
  weight_decay_mask: Any = None,
  nap_mask: Any = "decay",
  per_channel: bool = False,
  **base_kwargs,
) -> optax.GradientTransformation:
  """Any registered optimizer followed by ``normalize_and_project``.

  Args:
    learning_rate: float or schedule, passed to the base optimizer.
    base: a registered optimizer name (``'adamw'``, ``'sgd'``, ``'adamp'``, ...) or a
      ready ``GradientTransformation`` (then ``learning_rate``, ``weight_decay`` and
      ``base_kwargs`` are not used).
    weight_decay, weight_decay_mask: forwarded to the base optimizer.
    nap_mask, per_channel: see ``normalize_and_project``.
    **base_kwargs: the base optimizer's other keyword arguments.
  """
  # optax.inject_hyperparams binds **base_kwargs as one argument named 'base_kwargs'
  base_kwargs = {**base_kwargs.pop("base_kwargs", {}), **base_kwargs}
  if isinstance(base, str):
    inner = OPTIMIZERS.get(base)(
      learning_rate, weight_decay=weight_decay, weight_decay_mask=weight_decay_mask, **base_kwargs
    )
  elif isinstance(base, optax.GradientTransformation):
    if base_kwargs:
      raise ValueError(
        f"nap: keyword arguments {sorted(base_kwargs)} need base to be an "
        f"optimizer name, got a GradientTransformation"
      )
    inner = base
  else:
    raise ValueError(
      f"nap: base={base!r}: give a registered optimizer name "
      f"({', '.join(OPTIMIZERS.names())}) or an optax GradientTransformation"
    )
  return optax.chain(inner, normalize_and_project(nap_mask, per_channel=per_channel))
