r"""Riemannian SGD on the Grassmann manifold for GCR's class subspaces, as an optax transform.

Wang, Li, Zhang, "Get the Best of Both Worlds: Improving Accuracy and Transferability by
Grassmann Class Representation", ICCV 2023 (arXiv 2308.01547). Follows the official code,
innerlee/GCR ``gcr/rsgd.py`` (``RSGD``, the geometry branch of ``_single_tensor_sgd``) and its
wrappers ``gcr/rsgd_adamw.py`` / ``gcr/rsgd_lamb.py`` (read at 6e61485).

A leaf ``P`` of shape ``(..., d, k)`` (``normjax.models.heads.GrassmannHead`` stores
``(num_classes, d, k)``) is a batch of orthonormal bases, ``P^T P = I_k``. With the Euclidean
gradient ``g``, momentum ``mu``, dampening ``tau`` and step size ``a = lr_t * lr_factor``::

  buf = g                              at the first step (count 0), else
  buf = mu buf + (1 - tau) g           (Euclidean momentum, never projected or transported)
  G   = buf - P (P^T buf)              (the tangent projection of the step direction)
  G   = U diag(s) V^T                  (batched thin SVD; k = 1: s = |G|, U = G / s, V = 1)
  P'  = P V diag(cos(a s)) V^T - U diag(sin(a s)) V^T     (the geodesic of Edelman et al.)
  P'  = qf(P')                         when count % reorth_every == 0 (so also at count 0)

and the transform emits ``P' - P`` (``optax.apply_updates`` then lands on ``P'``). The
learning rate is therefore applied HERE (``learning_rate`` may be a schedule, evaluated at
the step count before the increment, as ``optax.scale_by_learning_rate`` does): the
transform is NOT chained with ``scale_by_learning_rate``. ``lr_factor`` is the official
coupling of the bases' step to the rest of the model's schedule: ``RAdamWOptimizer`` /
``RLambOptimizer`` set the RSGD learning rate to the current AdamW/LAMB one each step and
multiply it by ``lr_factor`` (e.g. ``0.3 / 0.004`` for DeiT-3: the bases peak at 0.3). In a
normjax config the ``grassmann`` group inherits ``optimizer.learning_rate`` and the
schedule, so ``lr_factor`` plays the same role.

``qf`` is the Q of a Householder QR without a sign fix (``torch.linalg.qr(...).Q``, LAPACK's
convention; ``qr_sign_fix=True`` multiplies each column by the sign of R's diagonal). A zero
tangent (a class absent from the batch with zero momentum) gives ``s = 0``: the step is the
identity.

Deviations from the official code, by choice: the QR counter and ``lr_factor`` live in this
transform's state and arguments, not in the module-level globals ``OPT_ITER``, ``REORTH_STEP``,
``LR_FACTOR`` (shared by every RSGD in a process; the last constructor wins, and they are not
checkpointed); the counter counts steps, where the official one counts geometry parameters
(identical for a model with one basis leaf, GCR's head). Weight decay is not defined for the
bases (the official RSGD skips it for geometry parameters): ``weight_decay`` must be 0.
Arithmetic runs in the wider of float32 and the leaf's dtype.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from normjax.optim._registry import register
from normjax.optim._riemannian import _learning_rate
from normjax.optim._transforms import compute_dtype, require_params, unzip


class ScaleByGrassmannRSGDState(NamedTuple):
  """State of ``scale_by_grassmann_rsgd``: step count (also the QR counter) and momentum."""

  count: jax.Array  # int32 scalar
  momentum: optax.Updates


def _is_python_number(x) -> bool:
  return isinstance(x, (int, float)) and not isinstance(x, bool)


def _check(momentum, dampening, reorth_every, lr_factor, learning_rate):
  for name, value in (("momentum", momentum), ("dampening", dampening)):
    if _is_python_number(value) and not 0 <= value <= 1:
      raise ValueError(f"grassmann_rsgd {name}={value!r}: must be in [0, 1]")
  if isinstance(reorth_every, bool) or (
    _is_python_number(reorth_every) and (int(reorth_every) != reorth_every or reorth_every < 1)
  ):
    raise ValueError(
      f"grassmann_rsgd reorth_every={reorth_every!r}: must be an integer >= 1 (QR every n steps)"
    )
  for name, value in (("lr_factor", lr_factor), ("learning_rate", learning_rate)):
    if _is_python_number(value) and value < 0:
      raise ValueError(f"grassmann_rsgd {name}={value!r}: must be >= 0")


def check_basis_shape(shape) -> None:
  if len(shape) < 2 or shape[-2] < shape[-1]:
    raise ValueError(
      f"grassmann_rsgd: a basis leaf must be (..., d, k) with d >= k, got shape {tuple(shape)}"
    )


def tangent(direction, basis):
  """``D - P (P^T D)``: the projection onto the Grassmannian's tangent space at ``P``."""
  return direction - basis @ (jnp.swapaxes(basis, -1, -2) @ direction)


def geodesic_step(basis, tangent_direction, step_size):
  """``P V cos(a S) V^T - U sin(a S) V^T`` with ``G = U S V^T`` (thin SVD; closed form at k=1)."""
  if basis.shape[-1] == 1:
    s = jnp.sqrt(jnp.sum(jnp.square(tangent_direction), axis=-2, keepdims=True))
    u = tangent_direction / jnp.where(s > 0, s, 1.0)
    return basis * jnp.cos(step_size * s) - u * jnp.sin(step_size * s)
  u, s, vt = jnp.linalg.svd(tangent_direction, full_matrices=False)
  cos, sin = jnp.cos(step_size * s)[..., None, :], jnp.sin(step_size * s)[..., None, :]
  return ((basis @ jnp.swapaxes(vt, -1, -2)) * cos - u * sin) @ vt


def orthonormalize(basis, sign_fix: bool = False):
  """Q of the QR of each basis (``sign_fix``: columns times sign(diag R))."""
  q, r = jnp.linalg.qr(basis)
  if sign_fix:
    q = q * jnp.where(jnp.diagonal(r, axis1=-2, axis2=-1) < 0, -1.0, 1.0)[..., None, :]
  return q


def scale_by_grassmann_rsgd(
  learning_rate: optax.ScalarOrSchedule,
  momentum: float = 0.9,
  dampening: float = 0.0,
  reorth_every: int = 5,
  lr_factor: float = 1.0,
  qr_sign_fix: bool = False,
  *,
  momentum_dtype: Optional[Any] = None,
) -> optax.GradientTransformation:
  """GCR's RSGD step for orthonormal-basis leaves ``(..., d, k)``; emits ``P_new - P``.

  Args:
    learning_rate: float or schedule (evaluated at the step count), applied here.
    momentum: Euclidean momentum ``mu`` (official recipes: 0.9); 0 uses the gradient.
    dampening: the buffer adds ``(1 - dampening) g`` after the first step (torch SGD's).
    reorth_every: QR re-orthogonalisation when ``count % reorth_every == 0`` (official
      ``reorth_step``: 5 in ``RSGD``, 1 in the AdamW/LAMB wrappers).
    lr_factor: multiplies the learning rate (the official ``LR_FACTOR``).
    qr_sign_fix: Q times sign(diag R) (the official code has no fix).
    momentum_dtype: dtype of the buffer (default: the parameter's).

  Returns:
    A transform whose ``update(grads, state, params)`` needs ``params``.
  """
  _check(momentum, dampening, reorth_every, lr_factor, learning_rate)
  momentum_dtype = None if momentum_dtype is None else jnp.dtype(momentum_dtype)

  def init_fn(params):
    for leaf in jax.tree.leaves(params):
      check_basis_shape(leaf.shape)
    return ScaleByGrassmannRSGDState(
      count=jnp.zeros([], jnp.int32),
      momentum=optax.tree.zeros_like(params, dtype=momentum_dtype),
    )

  def update_fn(updates, state, params=None):
    require_params(params, "grassmann_rsgd")
    lr = _learning_rate(learning_rate, state.count)
    first = state.count == 0
    reorth = state.count % reorth_every == 0

    def leaf(g, buf, p):
      check_basis_shape(p.shape)
      dtype = compute_dtype(g, p)
      c = lambda x: jnp.asarray(x, dtype)
      g_, p_ = g.astype(dtype), p.astype(dtype)
      buf_ = jnp.where(first, g_, c(momentum) * buf.astype(dtype) + c(1.0 - dampening) * g_)
      new = geodesic_step(p_, tangent(buf_, p_), c(lr) * c(lr_factor))
      new = jax.lax.cond(reorth, lambda x: orthonormalize(x, qr_sign_fix), lambda x: x, new)
      return (new - p_).astype(p.dtype), buf_.astype(buf.dtype)

    outputs = jax.tree.map(leaf, updates, state.momentum, params)
    new_updates, buffers = unzip(updates, outputs, 2)
    count = optax.safe_increment(state.count)
    return new_updates, ScaleByGrassmannRSGDState(count=count, momentum=buffers)

  return optax.GradientTransformation(init_fn, update_fn)


@register("grassmann_rsgd")
def grassmann_rsgd(
  learning_rate: optax.ScalarOrSchedule = 0.1,
  momentum: float = 0.9,
  dampening: float = 0.0,
  reorth_every: int = 5,
  lr_factor: float = 1.0,
  qr_sign_fix: bool = False,
  *,
  weight_decay: float = 0.0,
  weight_decay_mask: Any = None,
  momentum_dtype: Optional[Any] = None,
) -> optax.GradientTransformation:
  """GCR's Riemannian SGD for the class bases (``scale_by_grassmann_rsgd``; defaults of the
  official ``RSGD``'s ResNet recipe). Give it the leaves labelled ``'grassmann'`` by
  ``labels.manifold_groups`` through ``optax.partition``; ``weight_decay`` must be 0."""
  del weight_decay_mask
  if _is_python_number(weight_decay) and weight_decay != 0:
    raise ValueError(
      f"grassmann_rsgd weight_decay={weight_decay!r}: weight decay is not defined for the "
      f"orthonormal class bases (the official RSGD skips it); set the group's weight_decay to 0"
    )
  return scale_by_grassmann_rsgd(
    learning_rate,
    momentum,
    dampening,
    reorth_every,
    lr_factor,
    qr_sign_fix,
    momentum_dtype=momentum_dtype,
  )
