r"""Conda: Column-Normalized Adam.

Wang, Zhou, Dong, Li, Li, Zhou, Lao, Fang, Lin, "Conda: Column-Normalized Adam for
Training Large Language Models Faster", arXiv 2509.24218. Follows the official code,
jie040109/Conda:conda_torch/conda.py and conda_torch/projector.py (``proj_type='std'``).

For a Conda leaf read as a matrix ``X`` of shape ``(R, C)`` (rows = input/reduction
side, columns = output side; a Flax kernel ``(in, out)`` as is), step ``t = count + 1``,
refresh period ``T = update_proj_gap``::

  M <- b1 M + (1 - b1) G                          (momentum, original basis)
  Q  = square orthogonal factor of the thin SVD of M on the smaller side,
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
orthogonal, so this is exact up to rounding), then proceeds as above. Same
updates to rounding (tested), a third fewer rotation FLOPs; ``mu`` then holds the rotated
momentum of Conda leaves. Off by default (the official state layout).

Every other leaf follows the official code's plain path: the same moments and step
without rotation and without ``scale``: ``d = sqrt(1 - b2^t) / (1 - b1^t) M / (sqrt(V) +
eps)``. ``conda_mask`` picks the Conda leaves (default: every 2-D leaf; the paper's
grouping is ``'attention_mlp_kernels'``); 3-D attention kernels need ``MatrixAxes``
(``labels.attention_mlp_dimension_numbers``), as optax's muon and galore do.

Arithmetic (moments, bias corrections, SVD, rotations) runs in the wider of float32 and
the leaf's dtype: bfloat16/float16 leaves get float32 statistics (the basis is stored in
the parameter's dtype, as the official code), float64 runs stay float64 throughout.

Rank-deficient momentum (``singular_value_rtol``, off by default = official). When ``M``
has rank ``k`` below ``min(R, C)`` (e.g. a rank-1 gradient), the rotated coordinates
outside its range are zero in exact arithmetic but hold rounding noise (~1e-9 at
float32); the Adam normalisation ``rotate(M) / (sqrt(V) + eps)`` turns that noise into
O(0.1) updates in arbitrary directions, which then differ between two compilations of
the same step. With ``singular_value_rtol=r`` a rotated coordinate (a row of
``rotate(M)`` when ``R <= C``, a column otherwise) whose norm is below ``r`` times the
largest is treated as exactly zero: it adds nothing to ``V`` and its update is zero. At a
refresh step those norms are ``M``'s singular values; between refreshes they are the
norms of ``M`` in the kept basis, so a direction that leaves the null space counts again
as soon as it is above the threshold. The stored momentum is not changed. The case is
common: in a pre-LN transformer the kernels writing into the residual stream have momentum
orthogonal to the all-ones output vector (LayerNorm's backward pass removes the mean), so
where Conda rotates their output side (``R > C``, the MLP's output projection) one rotated
coordinate is pure noise all run long (GPT-2 config: no effect on its loss,
``experiments/gpt2_optimizers/conda_threshold.md``). ``1e-5`` clears float32 noise with a
margin (measured: 3e-8 of the largest at 2 x 3, 2e-7 at 128 x 512, 2.4e-6 at 768 x 3072).
"""

import math
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from normjax.optim._registry import register
from normjax.optim._transforms import (
  add_decayed_weights_after_step,
  compute_dtype,
  resolve_mask,
  unzip,
)
from normjax.optim.labels import MatrixAxes

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


def _axes_tuple(axes, ndim):
  axes = (axes,) if isinstance(axes, int) else tuple(axes)
  return tuple(a % ndim for a in axes)


class _Matrix(NamedTuple):
  """How one Conda leaf is read as a (rows, cols) matrix: its dimension numbers."""

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
        f"every axis exactly once to reduction_axis or output_axis"
      )
    return cls(red + out, math.prod(x.shape[a] for a in red), math.prod(x.shape[a] for a in out))

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


def _matrix_of(x, spec):
  """A leaf's ``_Matrix`` from its ``conda_mask`` value, or None (plain AdamW path)."""
  if not hasattr(spec, "reduction_axis"):  # a bool (Python, NumPy or 0-d array) or None
    spec = spec is not None and bool(spec)
  if spec is False:
    return None
  if spec is True:
    if x.ndim != 2:
      raise ValueError(
        f"conda_mask selects a leaf of shape {x.shape}: Conda needs a matrix; give "
        f"MatrixAxes(reduction_axis, output_axis) for leaves with ndim != 2 "
        f"(labels.attention_mlp_dimension_numbers does this for attention kernels)"
      )
    spec = MatrixAxes(0, 1)
  return _Matrix.of(x, spec)


def conda_matrices(conda_mask, params):
  """A tree with params' structure: each Conda leaf's ``_Matrix``, None elsewhere."""
  default = lambda p: jax.tree.map(lambda x: MatrixAxes(0, 1) if x.ndim == 2 else None, p)
  specs = resolve_mask(conda_mask, params, name="conda_mask", default=default)
  return jax.tree.map(_matrix_of, params, specs)


def resolve_conda_leaves(conda_mask, params):
  """``conda_matrices`` as a list in leaf order, and params' treedef."""
  treedef = jax.tree.structure(params)
  return treedef.flatten_up_to(conda_matrices(conda_mask, params)), treedef


def svd_basis(momentum_matrix, left: bool):
  """Square orthogonal factor on the smaller side, from the thin SVD (input's dtype)."""
  u, _, vh = jnp.linalg.svd(momentum_matrix, full_matrices=False)
  return u if left else vh.T


class _Rotated(NamedTuple):
  """One Conda leaf this step: its basis, ``rotate(M)`` and ``rotate(G)`` (matrices)."""

  basis: jax.Array
  momentum: jax.Array
  grad: jax.Array


def scale_by_conda(
  b1: float = 0.9,
  b2: float = 0.999,
  eps: float = 1e-8,
  scale: float = 1.0,
  update_proj_gap: int = 2000,
  conda_mask: Any = None,
  *,
  mu_dtype: Optional[Any] = None,
  precision: Any = None,
  rotated_momentum: bool = False,
  singular_value_rtol: Optional[float] = None,
) -> optax.GradientTransformation:
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
      rotation matmuls per plain step instead of three, same updates to rounding
      (module docstring).
    singular_value_rtol: None (official): off. A number: rotated coordinates whose norm
      is below this fraction of the largest are exact zeros (module docstring); 1e-5
      suits float32.
  """
  for name, value in dict(eps=eps, scale=scale, singular_value_rtol=singular_value_rtol).items():
    if isinstance(value, (int, float)) and value < 0:
      raise ValueError(f"{name}={value!r}: must be >= 0")
  if isinstance(update_proj_gap, int) and update_proj_gap < 1:
    raise ValueError(
      f"update_proj_gap={update_proj_gap!r}: must be a positive number of "
      f"steps (2000 in the official scripts)"
    )
  mu_dtype = None if mu_dtype is None else jnp.dtype(mu_dtype)
  dot = lambda a, b: jnp.matmul(a, b, precision=precision)
  rotate = lambda mat, q, x: dot(q.T, x) if mat.left else dot(x, q)
  back = lambda mat, q, y: dot(q, y) if mat.left else dot(y, q.T)

  def init_fn(params):
    basis = jax.tree.map(
      lambda x, mat: (
        optax.MaskedNode() if mat is None else jnp.zeros((mat.size, mat.size), x.dtype)
      ),
      params,
      conda_matrices(conda_mask, params),
    )
    return ScaleByCondaState(
      count=jnp.zeros([], jnp.int32),
      mu=optax.tree.zeros_like(params, dtype=mu_dtype),
      nu=optax.tree.zeros_like(params),
      basis=basis,
    )

  def update_fn(updates, state, params=None):
    mats = conda_matrices(conda_mask, updates if params is None else params)
    count = optax.safe_increment(state.count)

    def moment(g, m, mat):
      """``M'`` in the original basis; a Conda leaf's rotated state is updated later."""
      if mat is not None and rotated_momentum:
        return m
      dtype = compute_dtype(g)
      return jnp.asarray(b1, dtype) * m.astype(dtype) + jnp.asarray(1.0 - b1, dtype) * g.astype(
        dtype
      )

    def rotated(refresh):
      """Per Conda leaf: the basis (new on a refresh step), rotate(M'), rotate(G)."""

      def leaf(g, m, q, mat):
        if mat is None:
          return None
        dtype = compute_dtype(g)
        grad, basis = mat.to_matrix(g.astype(dtype)), q.astype(dtype)
        c1, c2 = jnp.asarray(b1, dtype), jnp.asarray(1.0 - b1, dtype)
        if not rotated_momentum:  # M' from ``moment``
          momentum = mat.to_matrix(m)
        elif refresh:  # M' = b1 back(rotate(M)) + (1 - b1) G, in the old basis
          momentum = c1 * back(mat, basis, mat.to_matrix(m.astype(dtype))) + c2 * grad
        else:  # the recurrence in the fixed basis: no matmul for M
          g_rot = rotate(mat, basis, grad)
          return _Rotated(basis, c1 * mat.to_matrix(m.astype(dtype)) + c2 * g_rot, g_rot)
        if refresh:  # the new basis, rounded to the state's dtype as it is stored
          basis = svd_basis(momentum, mat.left).astype(q.dtype).astype(dtype)
        return _Rotated(basis, rotate(mat, basis, momentum), rotate(mat, basis, grad))

      return lambda: jax.tree.map(leaf, updates, new_mu, state.basis, mats)

    def step(g, m, m_new, v, q, mat, rot):
      """The update and the new state of one leaf."""
      dtype = compute_dtype(g)
      c = lambda x: jnp.asarray(x, dtype)
      t = count.astype(dtype)
      step_size = jnp.sqrt(1.0 - jnp.power(c(b2), t)) / (1.0 - jnp.power(c(b1), t))
      if mat is None:  # the official plain path: HF AdamW
        v_new = c(b2) * v.astype(dtype) + c(1.0 - b2) * jnp.square(g.astype(dtype))
        d = step_size * m_new / (jnp.sqrt(v_new) + c(eps))
        return d.astype(g.dtype), m_new.astype(m.dtype), v_new.astype(v.dtype), q
      m_rot, g_rot = rot.momentum, rot.grad
      numer = m_rot
      if singular_value_rtol is not None:  # coordinates below the threshold are zeros
        norms = jnp.sqrt(jnp.sum(jnp.square(m_rot), axis=1 if mat.left else 0, keepdims=True))
        kept = norms >= c(singular_value_rtol) * jnp.max(norms)
        numer, g_rot = jnp.where(kept, m_rot, 0.0), jnp.where(kept, g_rot, 0.0)
      v_new = c(b2) * mat.to_matrix(v.astype(dtype)) + c(1.0 - b2) * jnp.square(g_rot)
      d = mat.from_matrix(
        (c(scale) * step_size) * back(mat, rot.basis, numer / (jnp.sqrt(v_new) + c(eps))), g.shape
      )
      mu = mat.from_matrix(m_rot, g.shape) if rotated_momentum else m_new
      return (
        d.astype(g.dtype),
        mu.astype(m.dtype),
        mat.from_matrix(v_new, g.shape).astype(v.dtype),
        rot.basis.astype(q.dtype),
      )

    new_mu = jax.tree.map(moment, updates, state.mu, mats)
    if any(mat is not None for mat in jax.tree.leaves(mats)):
      rotations = jax.lax.cond(
        state.count % update_proj_gap == 0, rotated(refresh=True), rotated(refresh=False)
      )
    else:
      rotations = jax.tree.map(lambda _: None, updates)
    outputs = jax.tree.map(step, updates, state.mu, new_mu, state.nu, state.basis, mats, rotations)
    new_updates, mu, nu, basis = unzip(updates, outputs, 4)
    return new_updates, ScaleByCondaState(count=count, mu=mu, nu=nu, basis=basis)

  return optax.GradientTransformation(init_fn, update_fn)


@register("conda")
def conda(
  learning_rate: optax.ScalarOrSchedule = 1e-3,
  b1: float = 0.9,
  b2: float = 0.999,
  eps: float = 1e-8,
  weight_decay: float = 0.0,
  scale: float = 1.0,
  update_proj_gap: int = 2000,
  conda_mask: Any = None,
  *,
  weight_decay_mask: Any = None,
  mu_dtype: Optional[Any] = None,
  precision: Any = None,
  rotated_momentum: bool = False,
  singular_value_rtol: Optional[float] = None,
) -> optax.GradientTransformation:
  """Conda: ``chain(scale_by_conda, add_decayed_weights_after_step, scale_by_learning_rate)``.

  Defaults are the official class's (lr 1e-3, betas (0.9, 0.999), eps 1e-8, wd 0) and
  projector's (scale 1, T 2000). Paper recipe (GPT-2 125M): lr 6e-3, b2 0.99, scale 0.25,
  wd 0.01, ``conda_mask='attention_mlp_kernels'``. ``weight_decay_mask=None`` decays every
  leaf (as the official single-group setup). With ``optax.inject_hyperparams`` pass
  callable masks in ``static_args``.
  """
  return optax.chain(
    scale_by_conda(
      b1,
      b2,
      eps,
      scale,
      update_proj_gap,
      conda_mask,
      mu_dtype=mu_dtype,
      precision=precision,
      rotated_momentum=rotated_momentum,
      singular_value_rtol=singular_value_rtol,
    ),
    add_decayed_weights_after_step(weight_decay, learning_rate, weight_decay_mask),
    optax.scale_by_learning_rate(learning_rate),
  )
