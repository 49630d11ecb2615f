r"""Conda: Column-Normalized Adam.

Wang, Zhou, Dong, Li, Li, Zhou, Lao, Fang, Lin, "Conda: Column-Normalized Adam for
Training Large Language Models Faster", arXiv 2509.24218. Follows the official code,
jie040109/Conda:conda_torch/conda.py and conda_torch/projector.py (``proj_type='std'``).

For a Conda leaf read as a matrix ``X`` of shape ``(R, C)`` (rows = input/reduction
side, columns = output side; a Flax kernel ``(in, out)`` as is), step ``t = count + 1``,
refresh period ``T = update_proj_gap``::

  M <- b1 M + (1 - b1) G                          (momentum, original basis)
  Q  = square orthogonal factor of the float32 thin SVD of M on the smaller side,
       refreshed when count % T == 0 (steps 0, T, 2T, ...; lax.cond), else kept:
       R <= C: Q = U (R x R), rotate(X) = Q^T X,  back(Y) = Q Y
       R >  C: Q = V (C x C), rotate(X) = X Q,    back(Y) = Y Q^T
  V <- b2 V + (1 - b2) rotate(G)^2                (second moment, rotated basis)
  d  = scale sqrt(1 - b2^t) / (1 - b1^t) back(rotate(M) / (sqrt(V) + eps))
  W <- W - lr d;  then  W <- W - lr wd W          (decay after the step)

eps is added to ``sqrt(V)`` before the bias correction (HF AdamW, ``correct_bias=True``).
The rotation is full rank (no truncation). torch keeps Vh (the input side) when
``out >= in``, square matrices included; in Flax's ``(in, out)`` layout the input side is
the row side, so ``R <= C`` rotates the rows (U) and a square kernel matches torch
exactly. ``V`` is not re-rotated when ``Q`` changes (as in the official code).

``rotated_momentum=True`` keeps ``rotate(M)`` in the state instead of ``M``. While ``Q``
is fixed ``rotate`` is linear, so ``rotate(M) <- b1 rotate(M) + (1 - b1) rotate(G)`` is
the same recurrence and a plain step needs two matmuls (``rotate(G)`` and ``back``)
instead of three; a refresh step first recovers ``M = back(rotate(M))`` (``Q`` is square
orthogonal, so this is exact up to float32 rounding), then proceeds as above. Same
updates to rounding (tested), a third fewer rotation FLOPs; ``mu`` then holds the rotated
momentum of Conda leaves. Off by default (the official state layout).

Every other leaf follows the official code's plain path: the same moments and step
without rotation and without ``scale``: ``d = sqrt(1 - b2^t) / (1 - b1^t) M / (sqrt(V) +
eps)``. ``conda_mask`` picks the Conda leaves (default: every 2-D leaf; the paper's
grouping is ``'attention_mlp_kernels'``); 3-D attention kernels need ``MatrixAxes``
(``labels.attention_mlp_dimension_numbers``), as optax's muon and galore do.
"""
from __future__ import annotations

import math
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from normjax.optim import labels, register
from normjax.optim.labels import MatrixAxes

_F32 = jnp.float32
CondaDimensionNumbers = MatrixAxes


class ScaleByCondaState(NamedTuple):
  """State of ``scale_by_conda``.

  ``mu`` (original basis) and ``nu`` (rotated basis) have each parameter's shape;
  ``basis`` holds the square orthogonal factor of each Conda leaf and
  ``optax.MaskedNode()`` (no array) for the other leaves; orbax cannot save empty arrays.
  """
  count: jax.Array  # int32 scalar
  mu: optax.Updates
  nu: optax.Updates
  basis: optax.Updates


def _is_spec_leaf(x):
  return x is None or isinstance(x, (bool, MatrixAxes)) or (
      hasattr(x, "reduction_axis") and hasattr(x, "output_axis"))


def _axes_tuple(axes, ndim):
  axes = (axes,) if isinstance(axes, int) else tuple(axes)
  return tuple(a % ndim for a in axes)


class _Matrix(NamedTuple):
  """How one leaf is read as a (rows, cols) matrix."""
  perm: tuple[int, ...]
  rows: int
  cols: int

  @classmethod
  def of(cls, x, spec):
    red = _axes_tuple(spec.reduction_axis, x.ndim)
    out = _axes_tuple(spec.output_axis, x.ndim)
    if sorted(red + out) != list(range(x.ndim)):
      raise ValueError(
          f"conda_mask: dimension numbers {spec} for a leaf of shape {x.shape} must assign "
          f"every axis exactly once to reduction_axis or output_axis")
    return cls(red + out, math.prod(x.shape[a] for a in red),
               math.prod(x.shape[a] for a in out))

  @property
  def left(self):  # rotate the row (input) side; square kernels too, as torch's Vh
    return self.rows <= self.cols

  @property
  def size(self):
    return min(self.rows, self.cols)

  def to_matrix(self, x):
    return jnp.transpose(x, self.perm).reshape(self.rows, self.cols)

  def from_matrix(self, y, shape):
    inverse = tuple(sorted(range(len(shape)), key=lambda i: self.perm[i]))
    return y.reshape(tuple(shape[a] for a in self.perm)).transpose(inverse)


def resolve_conda_leaves(conda_mask, params):
  """Per-leaf ``_Matrix`` (Conda leaf) or None, from ``conda_mask`` (see ``conda``)."""
  leaves, treedef = jax.tree.flatten(params)
  if conda_mask is None:
    specs = [MatrixAxes(0, 1) if x.ndim == 2 else None for x in leaves]
  else:
    mask = labels.resolve(conda_mask)
    mask = mask(params) if callable(mask) else mask
    try:
      specs = treedef.flatten_up_to(
          jax.tree.map(lambda s: s, mask, is_leaf=_is_spec_leaf))
    except (ValueError, TypeError) as e:
      raise ValueError(f"conda_mask must have the structure of params: {e}") from None
  result = []
  for x, spec in zip(leaves, specs):
    if spec is None or spec is False:
      result.append(None)
      continue
    if spec is True or (not _is_spec_leaf(spec) and bool(spec)):
      if x.ndim != 2:
        raise ValueError(
            f"conda_mask selects a leaf of shape {x.shape}: Conda needs a matrix; give "
            f"MatrixAxes(reduction_axis, output_axis) for leaves with ndim != 2 "
            f"(labels.attention_mlp_dimension_numbers does this for attention kernels)")
      spec = MatrixAxes(0, 1)
    elif not _is_spec_leaf(spec):
      result.append(None)
      continue
    result.append(_Matrix.of(x, spec))
  return result, treedef


def svd_basis(momentum_matrix, left: bool):
  """Square orthogonal factor on the smaller side, from the float32 thin SVD."""
  u, _, vh = jnp.linalg.svd(momentum_matrix.astype(_F32), full_matrices=False)
  return u if left else vh.T


def scale_by_conda(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
                   scale: float = 1.0, update_proj_gap: int = 2000,
                   conda_mask: Any = None, *, mu_dtype: Optional[Any] = None,
                   precision: Any = None,
                   rotated_momentum: bool = False) -> optax.GradientTransformation:
  """Conda's step direction ``d`` (see the module docstring); no lr, no weight decay.

  Args:
    b1, b2, eps: Adam's decay rates and epsilon (eps inside the bias correction).
    scale: multiplies the update of Conda leaves (the official ``scale``).
    update_proj_gap: the basis is recomputed when ``count % update_proj_gap == 0``.
    conda_mask: which leaves get Conda: None (every 2-D leaf), a ``labels.LABELS`` name,
      a pytree or ``fn(params)`` of bools, or of ``MatrixAxes``/None for N-D kernels.
    mu_dtype: dtype of the first moment (default: the parameter's). ``nu`` and the basis
      use the parameter's dtype, as the official code.
    precision: precision of the rotation matmuls (``jax.lax.Precision`` or a string).
      None uses JAX's default: exact float32 on CPU, TF32 on recent NVIDIA GPUs (what
      nanoGPT's train.py enables in torch), one bfloat16 pass on TPU; ``'highest'``
      rotates in full float32 everywhere, at several times the matmul cost.
    rotated_momentum: keep the momentum of Conda leaves in the rotated basis: two
      rotation matmuls per plain step instead of three, same updates to float32
      rounding (module docstring).
  """
  for name, value in dict(eps=eps, scale=scale).items():
    if isinstance(value, (int, float)) and value < 0:
      raise ValueError(f"{name}={value!r}: must be >= 0")
  if isinstance(update_proj_gap, int) and update_proj_gap < 1:
    raise ValueError(f"update_proj_gap={update_proj_gap!r}: must be a positive number of "
                     f"steps (2000 in the official scripts)")
  mu_dtype = None if mu_dtype is None else jnp.dtype(mu_dtype)
  dot = lambda a, b: jnp.matmul(a, b, precision=precision)

  def init_fn(params):
    mats, treedef = resolve_conda_leaves(conda_mask, params)
    leaves = treedef.flatten_up_to(params)
    basis = [optax.MaskedNode() if mat is None else jnp.zeros((mat.size, mat.size), x.dtype)
             for x, mat in zip(leaves, mats)]
    return ScaleByCondaState(
        count=jnp.zeros([], jnp.int32),
        mu=optax.tree.zeros_like(params, dtype=mu_dtype),
        nu=optax.tree.zeros_like(params),
        basis=treedef.unflatten(basis))

  def update_fn(updates, state, params=None):
    mats, treedef = resolve_conda_leaves(conda_mask, updates if params is None else params)
    leaves_g = treedef.flatten_up_to(updates)
    leaves_m = treedef.flatten_up_to(state.mu)
    leaves_v = treedef.flatten_up_to(state.nu)
    leaves_q = treedef.flatten_up_to(state.basis)
    t = optax.safe_increment(state.count).astype(_F32)
    step = jnp.sqrt(1.0 - jnp.power(jnp.asarray(b2, _F32), t)) / (
        1.0 - jnp.power(jnp.asarray(b1, _F32), t))

    conda_ids = [i for i, mat in enumerate(mats) if mat is not None]
    momentum = lambda m, g: b1 * m.astype(_F32) + (1.0 - b1) * g.astype(_F32)
    rotate = lambda mat, q, x: dot(q.T, x) if mat.left else dot(x, q)
    back = lambda mat, q, y: dot(q, y) if mat.left else dot(y, q.T)
    matrix = lambda i, x: mats[i].to_matrix(x.astype(_F32))
    # new_m: the state's momentum (rotated for Conda leaves if rotated_momentum);
    # conda[i] = (basis, rotate(M), rotate(G)) of each Conda leaf, from the lax.cond.
    new_m = [momentum(m, g) if mats[i] is None or not rotated_momentum else None
             for i, (g, m) in enumerate(zip(leaves_g, leaves_m))]

    def refreshed():
      result = []
      for i in conda_ids:
        mat, q_old = mats[i], leaves_q[i].astype(_F32)
        if rotated_momentum:  # M = back(rotate(M)) in the old basis, then the recurrence
          m2 = b1 * back(mat, q_old, matrix(i, leaves_m[i])) + (1.0 - b1) * matrix(i, leaves_g[i])
        else:
          m2 = matrix(i, new_m[i])
        q = svd_basis(m2, mat.left).astype(leaves_q[i].dtype).astype(_F32)
        result.append((q, rotate(mat, q, m2), rotate(mat, q, matrix(i, leaves_g[i]))))
      return result

    def kept():
      result = []
      for i in conda_ids:
        mat, q = mats[i], leaves_q[i].astype(_F32)
        g_rot = rotate(mat, q, matrix(i, leaves_g[i]))
        m_rot = (b1 * matrix(i, leaves_m[i]) + (1.0 - b1) * g_rot if rotated_momentum
                 else rotate(mat, q, matrix(i, new_m[i])))
        result.append((q, m_rot, g_rot))
      return result
    conda = dict(zip(conda_ids, jax.lax.cond(state.count % update_proj_gap == 0,
                                             refreshed, kept) if conda_ids else []))

    out, new_v, new_q = [], [], []
    for i, (g, m, v, q) in enumerate(zip(leaves_g, leaves_m, leaves_v, leaves_q)):
      mat = mats[i]
      if mat is None:
        v32 = b2 * v.astype(_F32) + (1.0 - b2) * jnp.square(g.astype(_F32))
        d = step * new_m[i] / (jnp.sqrt(v32) + eps)
      else:
        q32, m_rot, g_rot = conda[i]
        v2 = b2 * mat.to_matrix(v.astype(_F32)) + (1.0 - b2) * jnp.square(g_rot)
        d = mat.from_matrix((scale * step) * back(mat, q32, m_rot / (jnp.sqrt(v2) + eps)),
                            g.shape)
        v32 = mat.from_matrix(v2, g.shape)
        q = q32.astype(q.dtype)
        if rotated_momentum:
          new_m[i] = mat.from_matrix(m_rot, g.shape)
      out.append(d.astype(g.dtype))
      new_v.append(v32.astype(v.dtype))
      new_q.append(q)
      new_m[i] = new_m[i].astype(m.dtype)
    return treedef.unflatten(out), ScaleByCondaState(
        count=optax.safe_increment(state.count), mu=treedef.unflatten(new_m),
        nu=treedef.unflatten(new_v), basis=treedef.unflatten(new_q))

  return optax.GradientTransformation(init_fn, update_fn)


class DecayAfterStepState(NamedTuple):
  count: jax.Array  # int32 scalar, for a learning-rate schedule


def add_decayed_weights_after_step(weight_decay: float, learning_rate: optax.ScalarOrSchedule,
                                   mask: Any = None) -> optax.GradientTransformation:
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
    if isinstance(weight_decay, (int, float)) and weight_decay == 0:
      return updates, DecayAfterStepState(count=optax.safe_increment(state.count))
    lr = learning_rate(state.count) if callable(learning_rate) else learning_rate
    new = jax.tree.map(
        lambda d, p: (d.astype(_F32) + weight_decay * (p.astype(_F32) - lr * d.astype(_F32))
                      ).astype(d.dtype), updates, params)
    return new, DecayAfterStepState(count=optax.safe_increment(state.count))

  tx = optax.GradientTransformation(init_fn, update_fn)
  return tx if mask is None else optax.masked(tx, labels.resolve(mask))


@register("conda")
def conda(learning_rate: optax.ScalarOrSchedule = 1e-3, b1: float = 0.9, b2: float = 0.999,
          eps: float = 1e-8, weight_decay: float = 0.0, scale: float = 1.0,
          update_proj_gap: int = 2000, conda_mask: Any = None, *,
          weight_decay_mask: Any = None, mu_dtype: Optional[Any] = None,
          precision: Any = None, rotated_momentum: bool = False) -> optax.GradientTransformation:
  """Conda: ``chain(scale_by_conda, add_decayed_weights_after_step, scale_by_learning_rate)``.

  Defaults are the official class's (lr 1e-3, betas (0.9, 0.999), eps 1e-8, wd 0) and
  projector's (scale 1, T 2000). Paper recipe (GPT-2 125M): lr 6e-3, b2 0.99, scale 0.25,
  wd 0.01, ``conda_mask='attention_mlp_kernels'``. ``weight_decay_mask=None`` decays every
  leaf (as the official single-group setup). With ``optax.inject_hyperparams`` pass
  callable masks in ``static_args``.
  """
  return optax.chain(
      scale_by_conda(b1, b2, eps, scale, update_proj_gap, conda_mask, mu_dtype=mu_dtype,
                     precision=precision, rotated_momentum=rotated_momentum),
      add_decayed_weights_after_step(weight_decay, learning_rate, weight_decay_mask),
      optax.scale_by_learning_rate(learning_rate))
