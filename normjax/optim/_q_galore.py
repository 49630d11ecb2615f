r"""Q-GaLore: GaLore with quantized projectors and a layer-adaptive lazy subspace refresh.

Zhang, Jaiswal, Yin, Liu, Zhao, Tian, Wang, "Q-GaLore: Quantized GaLore with INT4 Projection
and Layer-Adaptive Low-Rank Gradients", arXiv 2407.08296; official code VITA-Group/Q-GaLore
(``q_galore_torch/q_galore_projector.py``, ``q_galore_adamw8bit.py``). Built on the design of
``optax.contrib.galore`` (``optax/contrib/_galore.py``) and equal to it with every option off.

For a GaLore leaf read as a matrix ``X`` (R x C; rows = input side of a Flax kernel
``(in, out)``; ``MatrixAxes`` for N-D kernels), rank ``r = min(rank, R, C)``, and step
counter ``count`` (0 at the first update)::

  refresh when count % gap == 0:  U S V^T = svd(X)   (float32, or float64 for float64 X)
     left side:   P = U[:, :r]  (R x r),  low = P^T X,   back(D) = P D
     right side:  P = V[:, :r]  (C x r),  low = X P,     back(D) = D P^T
  d = scale * back(base_optimizer(low))                 (Adam by default; state r-shaped)

``side='optax'``: left when R >= C (optax compresses the larger dimension);
``side='official'``: left when R <= C. The official code, on a torch ``(out, in)`` weight,
keeps ``Vh[:r]`` when out >= in, i.e. the input side, which is the row side of the Flax
kernel: it compresses the smaller dimension, so its low-rank state is r x max(R, C).
Square matrices are left on both sides.

Options (all off = ``optax.contrib.galore``):

* ``proj_bits=n``: the projector is stored quantized (``normjax.optim._quantize``, n-bit
  min-max per group of ``proj_group_size`` consecutive entries) and used dequantized, at
  the refresh step too. Groups run in the official tensor's order: ``Vh[:r]`` (r x R) on
  the left side, ``U[:, :r]`` (C x r) on the right. ``proj_pack=True`` puts 8 // n codes
  in a byte (the official code keeps one code per byte: no saving over 8 bits).
* ``lazy_cosine='signed' | 'abs'``: the layer-adaptive gap. Each leaf has its own gap
  (``update_proj_gap`` at first). At each refresh after the first, the cosine between the
  new and the previous top singular vector (``P[:, 0]``, float, before quantization) is
  pushed into a FIFO of length ``queue_size``; when the FIFO is full and its mean (signed:
  official; abs: of ``|cos|``) is ``>= cos_threshold``, ``gap <- int(gap * gamma_proj)``.
  The FIFO is never cleared. Singular vectors have arbitrary signs, so the signed mean
  mixes subspace stability with sign flips; ``'abs'`` removes them. Both are logged,
  whatever the choice: ``signed_passes`` / ``abs_passes`` count the refreshes at which
  each statistic was over the threshold, ``gap_growths`` the actual growths,
  ``svd_count`` the refreshes (``q_galore_stats``). None: fixed gap (the FIFO is still
  kept, for the logs).

Not in the official step: the low-rank Adam is 32-bit (optax's ``scale_by_adam``; the
official uses bitsandbytes' blockwise 8-bit Adam for tensors of >= 4096 entries and 32-bit
below; optax has no 8-bit Adam), and the SVD of a float64 gradient is float64 (the
official casts to float32). The INT8 weights with stochastic rounding are a weight
storage, ``normjax.optim.quantized_weights``, applied by the trainer's step.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from normjax.optim._quantize import check_quantization, dequantize, quantize
from normjax.optim._registry import register
from normjax.optim._transforms import (
  add_decayed_weights_after_step,
  bool_mask,
  compute_dtype,
  resolve_mask,
  unzip,
)
from normjax.optim.labels import MatrixAxes

SIDES = ("optax", "official")
LAZY_COSINES = (None, "signed", "abs")


class LazyRefreshState(NamedTuple):
  """Per GaLore leaf: the adaptive gap, the cosine FIFO and counters (int32 scalars)."""

  gap: jax.Array
  cos_queue: jax.Array  # (queue_size,) float32 (or wider), oldest first
  queue_len: jax.Array
  top_vector: jax.Array  # the previous refresh's top singular vector
  svd_count: jax.Array
  gap_growths: jax.Array
  signed_passes: jax.Array
  abs_passes: jax.Array


class ScaleByQGaLoreState(NamedTuple):
  """``projector``: per GaLore leaf a float array (the param's dtype) or a
  ``QuantizedArray``; ``lazy``: per GaLore leaf a ``LazyRefreshState``. Other leaves hold
  ``optax.MaskedNode()`` in both (orbax cannot save empty arrays)."""

  count: jax.Array  # int32 scalar
  base_optimizer_state: optax.OptState
  projector: optax.Updates
  lazy: optax.Updates


class _Leaf(NamedTuple):
  """How one GaLore leaf is projected (all static)."""

  perm: tuple[int, ...]
  rows: int
  cols: int
  rank: int
  left: bool

  def to_matrix(self, x):
    return jnp.transpose(x, self.perm).reshape(self.rows, self.cols)

  def from_matrix(self, y, shape):
    inverse = tuple(sorted(range(len(shape)), key=lambda i: self.perm[i]))
    return y.reshape(tuple(shape[a] for a in self.perm)).transpose(inverse)

  @property
  def projector_shape(self):
    return (self.rows if self.left else self.cols, self.rank)

  @property
  def low_shape(self):
    return (self.rank, self.cols) if self.left else (self.rows, self.rank)


def _axes(axes, ndim):
  return tuple(a % ndim for a in ((axes,) if isinstance(axes, int) else axes))


def _leaf_of(x, spec, rank: int, side: str) -> Optional[_Leaf]:
  if not hasattr(spec, "reduction_axis"):
    if spec is None or not bool(spec):
      return None
    if x.ndim != 2:
      raise ValueError(
        f"galore_mask selects a leaf of shape {x.shape}: GaLore needs a matrix; give "
        f"MatrixAxes(reduction_axis, output_axis) for leaves with ndim != 2"
      )
    spec = MatrixAxes(0, 1)
  red, out = _axes(spec.reduction_axis, x.ndim), _axes(spec.output_axis, x.ndim)
  if sorted(red + out) != list(range(x.ndim)):
    raise ValueError(
      f"galore_mask: dimension numbers {spec} for a leaf of shape {x.shape} must assign "
      f"every axis exactly once to reduction_axis or output_axis"
    )
  rows, cols = math.prod(x.shape[a] for a in red), math.prod(x.shape[a] for a in out)
  left = rows >= cols if side == "optax" else rows <= cols
  return _Leaf(red + out, rows, cols, min(rank, rows, cols), left)


def galore_leaves(galore_mask, params, rank: int, side: str):
  """A tree with params' structure: each GaLore leaf's ``_Leaf``, None elsewhere."""
  default = lambda p: jax.tree.map(lambda x: MatrixAxes(0, 1) if x.ndim == 2 else None, p)
  specs = resolve_mask(galore_mask, params, name="galore_mask", default=default)
  return jax.tree.map(lambda x, s: _leaf_of(x, s, rank, side), params, specs)


def _cosine(a, b):
  """torch.nn.functional.cosine_similarity of two vectors (eps 1e-8)."""
  return jnp.dot(a, b) / jnp.maximum(jnp.linalg.norm(a) * jnp.linalg.norm(b), 1e-8)


def scale_by_q_galore(
  rank: int = 128,
  update_proj_gap: int = 200,
  scale: float = 1.0,
  base_optimizer: Optional[optax.GradientTransformation] = None,
  galore_mask: Any = None,
  *,
  side: str = "optax",
  proj_bits: Optional[int] = None,
  proj_group_size: int = 256,
  proj_pack: bool = False,
  lazy_cosine: Optional[str] = None,
  cos_threshold: float = 0.4,
  gamma_proj: float = 2,
  queue_size: int = 5,
) -> optax.GradientTransformation:
  """Q-GaLore's update direction (module docstring); no lr, no weight decay.

  Args:
    rank, update_proj_gap, scale, base_optimizer: as ``optax.contrib.scale_by_galore``
      (``base_optimizer`` None: ``optax.scale_by_adam()``; it must not need params).
    galore_mask: the GaLore leaves: None (every 2-D leaf, as optax), a ``labels.LABELS``
      name, a pytree or ``fn(params)`` of bools, or of ``MatrixAxes``/None for N-D kernels.
    side: 'optax' (compress the larger dimension) or 'official' (the smaller one).
    proj_bits, proj_group_size, proj_pack: quantized projector storage (None: float).
    lazy_cosine, cos_threshold, gamma_proj, queue_size: the adaptive gap (None: fixed).
  """
  if base_optimizer is None:
    base_optimizer = optax.scale_by_adam()
  if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
    raise ValueError(f"rank={rank!r}: must be a positive integer (128 in the official scripts)")
  if isinstance(update_proj_gap, (int, float)) and update_proj_gap < 1:
    raise ValueError(f"update_proj_gap={update_proj_gap!r}: must be a positive number of steps")
  if side not in SIDES:
    raise ValueError(f"side={side!r}: one of {', '.join(SIDES)}")
  if lazy_cosine not in LAZY_COSINES:
    raise ValueError(f"lazy_cosine={lazy_cosine!r}: one of {LAZY_COSINES}")
  if proj_bits is not None:
    check_quantization(proj_bits, proj_group_size, names=("proj_bits", "proj_group_size"))
    if proj_pack and 8 % proj_bits:
      raise ValueError(f"proj_pack=True needs proj_bits in (1, 2, 4, 8), got {proj_bits}")
  if isinstance(queue_size, bool) or not isinstance(queue_size, int) or queue_size < 1:
    raise ValueError(f"queue_size={queue_size!r}: must be a positive integer (official: 5)")
  if isinstance(gamma_proj, (int, float)) and gamma_proj < 1:
    raise ValueError(f"gamma_proj={gamma_proj!r}: must be >= 1 (official: 2)")
  if isinstance(scale, (int, float)) and scale < 0:
    raise ValueError(f"scale={scale!r}: must be >= 0")

  def leaves_of(tree):
    return galore_leaves(galore_mask, tree, rank, side)

  def store(p, leaf, dtype):
    """A projector (optax orientation) as the state holds it."""
    if proj_bits is None:
      return p.astype(dtype)
    official = p.T if leaf.left else p  # Vh[:r] (r x R) or U[:, :r] (C x r)
    return quantize(official, proj_bits, proj_group_size, pack=proj_pack)

  def load(stored, leaf, dtype):
    """The projector as used in the matmuls (optax orientation, the leaf's dtype)."""
    if proj_bits is None:
      return stored.astype(dtype)
    shape = leaf.projector_shape[::-1] if leaf.left else leaf.projector_shape
    p = dequantize(stored, shape, stored.scale.dtype, proj_bits, proj_group_size, pack=proj_pack)
    return (p.T if leaf.left else p).astype(dtype)

  def init_fn(params):
    leaves = leaves_of(params)
    int0 = lambda: jnp.zeros([], jnp.int32)

    def init_leaf(x, leaf):
      if leaf is None:
        return optax.MaskedNode(), optax.MaskedNode(), jnp.zeros_like(x)
      lazy = LazyRefreshState(
        gap=jnp.asarray(update_proj_gap, jnp.int32),
        cos_queue=jnp.zeros((queue_size,), compute_dtype(x)),
        queue_len=int0(),
        top_vector=jnp.zeros((leaf.projector_shape[0],), compute_dtype(x)),
        svd_count=int0(),
        gap_growths=int0(),
        signed_passes=int0(),
        abs_passes=int0(),
      )
      projector = store(jnp.zeros(leaf.projector_shape, x.dtype), leaf, x.dtype)
      return projector, lazy, jnp.zeros(leaf.low_shape, x.dtype)

    projector, lazy, proxies = unzip(params, jax.tree.map(init_leaf, params, leaves), 3)
    return ScaleByQGaLoreState(
      count=jnp.zeros([], jnp.int32),
      base_optimizer_state=base_optimizer.init(proxies),
      projector=projector,
      lazy=lazy,
    )

  def refresh(grad_matrix, stored, lazy, leaf):
    """The new projector and lazy state from the SVD of the gradient."""
    dtype = compute_dtype(grad_matrix)
    u, _, vh = jnp.linalg.svd(grad_matrix.astype(dtype), full_matrices=False)
    p = u[:, : leaf.rank] if leaf.left else vh[: leaf.rank].T
    p = p.astype(grad_matrix.dtype)  # the official SVD output, cast to the grad's dtype
    top = p[:, 0].astype(lazy.top_vector.dtype)
    has_prev = lazy.svd_count > 0
    cos = _cosine(lazy.top_vector, top)
    queue = jnp.where(has_prev, jnp.append(lazy.cos_queue[1:], cos), lazy.cos_queue)
    queue_len = jnp.where(has_prev, jnp.minimum(lazy.queue_len + 1, queue_size), lazy.queue_len)
    full = has_prev & (queue_len == queue_size)
    signed = full & (jnp.mean(queue) >= cos_threshold)
    absolute = full & (jnp.mean(jnp.abs(queue)) >= cos_threshold)
    grow = {None: jnp.zeros([], bool), "signed": signed, "abs": absolute}[lazy_cosine]
    grown = jnp.floor(lazy.gap.astype(jnp.float32) * gamma_proj).astype(jnp.int32)
    new_lazy = LazyRefreshState(
      gap=jnp.where(grow, grown, lazy.gap),
      cos_queue=queue,
      queue_len=queue_len,
      top_vector=top,
      svd_count=lazy.svd_count + 1,
      gap_growths=lazy.gap_growths + grow.astype(jnp.int32),
      signed_passes=lazy.signed_passes + signed.astype(jnp.int32),
      abs_passes=lazy.abs_passes + absolute.astype(jnp.int32),
    )
    return store(p, leaf, grad_matrix.dtype), new_lazy

  def update_fn(updates, state, params=None):
    del params
    leaves = leaves_of(updates)
    count = state.count

    def project(g, stored, lazy, leaf):
      if leaf is None:
        return g, stored, lazy
      x = leaf.to_matrix(g)
      gap = update_proj_gap if lazy_cosine is None else lazy.gap
      stored, lazy = jax.lax.cond(
        count % gap == 0,
        lambda: refresh(x, stored, lazy, leaf),
        lambda: (stored, lazy),
      )
      p = load(stored, leaf, g.dtype)
      return (p.T @ x if leaf.left else x @ p), stored, lazy

    outputs = jax.tree.map(project, updates, state.projector, state.lazy, leaves)
    low, projector, lazy = unzip(updates, outputs, 3)
    low_updates, base_state = base_optimizer.update(low, state.base_optimizer_state, None)

    def back(d, g, stored, leaf):
      if leaf is None:
        return d
      p = load(stored, leaf, g.dtype)
      full = p @ d if leaf.left else d @ p.T
      return (scale * leaf.from_matrix(full, g.shape)).astype(g.dtype)

    new_updates = jax.tree.map(back, low_updates, updates, projector, leaves)
    new_state = ScaleByQGaLoreState(
      count=optax.safe_increment(count),
      base_optimizer_state=base_state,
      projector=projector,
      lazy=lazy,
    )
    return new_updates, new_state

  return optax.GradientTransformation(init_fn, update_fn)


@register("q_galore")
def q_galore(
  learning_rate: optax.ScalarOrSchedule,
  rank: int = 128,
  update_proj_gap: int = 200,
  scale: float = 1.0,
  b1: float = 0.9,
  b2: float = 0.999,
  eps: float = 1e-8,
  weight_decay: float = 0.0,
  galore_mask: Any = None,
  *,
  weight_decay_mask: Any = None,
  decay_after_step: bool = False,
  base_optimizer: Optional[optax.GradientTransformation] = None,
  side: str = "optax",
  proj_bits: Optional[int] = None,
  proj_group_size: int = 256,
  proj_pack: bool = False,
  lazy_cosine: Optional[str] = None,
  cos_threshold: float = 0.4,
  gamma_proj: float = 2,
  queue_size: int = 5,
) -> optax.GradientTransformation:
  """Q-GaLore: ``chain(scale_by_q_galore, weight decay, scale_by_learning_rate)``.

  Defaults equal ``optax.contrib.galore`` (rank 128, gap 200, Adam (0.9, 0.999, 1e-8), no
  decay, every 2-D leaf, optax's side). The official LLaMA-60M recipe: lr 0.015, scale
  0.25, rank 128, gap 200, b2 0.95, wd 0, ``galore_mask='attention_mlp_kernels'``,
  ``side='official'``, ``proj_bits=4``, ``lazy_cosine='signed'``, ``decay_after_step=True``,
  with ``quantized_weights()`` as the trainer's weight storage.

  ``weight_decay`` is decoupled and lr-coupled, on ``weight_decay_mask`` (None: every
  leaf). ``decay_after_step=True`` decays the GaLore leaves after the step,
  ``W <- (W - lr d)(1 - lr wd)`` (official: ``p.data.add_(p.data, alpha=-lr*wd)`` after
  the projected update); the other leaves always decay before it, ``W - lr (d + wd W)``
  (bitsandbytes' Adam, and optax). ``base_optimizer`` replaces ``scale_by_adam(b1, b2,
  eps)``. Other arguments: ``scale_by_q_galore``.
  """
  base = optax.scale_by_adam(b1, b2, eps) if base_optimizer is None else base_optimizer
  tx = scale_by_q_galore(
    rank,
    update_proj_gap,
    scale,
    base,
    galore_mask,
    side=side,
    proj_bits=proj_bits,
    proj_group_size=proj_group_size,
    proj_pack=proj_pack,
    lazy_cosine=lazy_cosine,
    cos_threshold=cos_threshold,
    gamma_proj=gamma_proj,
    queue_size=queue_size,
  )
  if not decay_after_step:
    decay = [optax.add_decayed_weights(weight_decay, _decay_mask(weight_decay_mask))]
  else:
    in_galore = lambda params: jax.tree.map(
      lambda leaf: leaf is not None,
      galore_leaves(galore_mask, params, rank, side),
      is_leaf=lambda x: x is None or isinstance(x, _Leaf),
    )
    both = lambda want: (
      lambda params: jax.tree.map(
        lambda d, g: d and g == want,
        bool_mask(weight_decay_mask, params, name="weight_decay_mask"),
        in_galore(params),
      )
    )
    decay = [
      optax.add_decayed_weights(weight_decay, both(False)),
      add_decayed_weights_after_step(weight_decay, learning_rate, both(True)),
    ]
  return optax.chain(tx, *decay, optax.scale_by_learning_rate(learning_rate))


def _decay_mask(mask):
  """``weight_decay_mask`` for ``optax.add_decayed_weights`` (None: every leaf)."""
  if mask is None:
    return None
  return lambda params: bool_mask(mask, params, name="weight_decay_mask")


def q_galore_stats(opt_state) -> dict:
  """Totals over the GaLore leaves of every ``ScaleByQGaLoreState`` in ``opt_state``:
  ``svd_count``, ``gap_growths``, ``signed_passes``, ``abs_passes`` (ints), ``leaves``, and
  ``gaps`` (each leaf's current gap, in leaf order)."""
  is_state = lambda x: isinstance(x, ScaleByQGaLoreState)
  is_lazy = lambda x: isinstance(x, LazyRefreshState)
  lazies = [
    lazy
    for s in jax.tree.leaves(opt_state, is_leaf=is_state)
    if is_state(s)
    for lazy in jax.tree.leaves(s.lazy, is_leaf=is_lazy)
    if is_lazy(lazy)
  ]
  out = {k: int(sum(int(getattr(z, k)) for z in lazies)) for k in LazyRefreshState._fields[4:]}
  out.update(leaves=len(lazies), gaps=[int(z.gap) for z in lazies])
  return out
