"""Parameter partitions: functions of a params pytree returning a pytree of labels.

Paths are the key paths of an NNX ``nnx.State`` / nested dict, e.g.
``('blocks', 0, 'attn', 'qkv', 'kernel')``; norm modules sit in attributes whose names
contain ``norm`` (see ``normjax.norms``). An ``nnx.State`` path ends in the Variable's
``value`` attribute, which the functions below ignore.

Every function registered in ``LABELS`` has the signature ``fn(params, **kwargs)`` and
returns a pytree with the structure of ``params`` (bools for masks, strings for
``optax.partition`` labels, ``MatrixAxes``/``None`` for dimension numbers). Configs name
them, e.g. ``optimizer.conda_mask='attention_mlp_kernels'``::

  labels.LABELS.get('no_decay')(params)
  labels.resolve('scale_invariant', patterns=('*conv*/kernel',))  # -> fn(params)

Which leaves are scale-invariant (the loss does not change when the leaf is multiplied
by c > 0, so its gradient is orthogonal to it: a weight directly followed by a
normalization over the weight's output, with no bias in between) is a property of the
model, not of the params tree. Two ways to get it:

* ``scale_invariant(params, patterns)``: you state the structure, as ``fnmatch``
  patterns over ``'/'``-joined paths (e.g. ``'*/conv*/kernel'`` for convolutions followed
  by BatchNorm).
* ``probe_scale_invariance(apply_fn, params, *inputs)``: measures it, by multiplying one
  candidate leaf at a time by 0.5 and by 2 and checking that ``apply_fn``'s output is
  unchanged. Run it once at set-up with a training-mode ``apply_fn`` (batch statistics)
  and a small batch; its result is a plain bool tree to use as a mask.
"""

from __future__ import annotations

import fnmatch
from typing import Any, Callable, Iterable, NamedTuple, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from normjax.registry import Registry
from normjax.stack_layout import per_layer_labels

LABELS = Registry("parameter label", "optimizer.labels")


def register(name: str):
  """``@register('name')``: a label function, registered as one that labels a scanned
  transformer stack per layer (``normjax.stack_layout.per_layer_labels``)."""
  return lambda fn: LABELS.register(name)(per_layer_labels(fn))


ATTENTION_NAMES = ("attn", "attention", "mha")
MLP_NAMES = ("mlp", "ffn", "feed_forward", "feedforward")
OUTPUT_PROJECTION_NAMES = ("out", "o", "o_proj", "out_proj", "proj", "c_proj", "wo")


def path_names(path) -> tuple[str, ...]:
  """The key path of a leaf as plain strings."""
  names = []
  for k in path:
    for attr in ("key", "name", "idx"):
      if hasattr(k, attr):
        names.append(str(getattr(k, attr)))
        break
    else:
      names.append(str(k))
  return tuple(names)


def param_names(path) -> tuple[str, ...]:
  """``path_names`` without the trailing Variable ``.value`` of an ``nnx.State`` path."""
  names = path_names(path)
  if path and isinstance(path[-1], jax.tree_util.GetAttrKey) and path[-1].name == "value":
    names = names[:-1]
  return names


def is_norm_param(path) -> bool:
  return any("norm" in n.lower() for n in path_names(path)[:-1])


def is_bias(path) -> bool:
  """A leaf named ``bias`` (2-D for ``nnx.MultiHeadAttention``'s projections)."""
  names = param_names(path)
  return bool(names) and names[-1] == "bias"


def _map(fn: Callable[[tuple[str, ...], Any], Any], params):
  """``fn(names, leaf)`` over the leaves of ``params``."""
  return jax.tree_util.tree_map_with_path(lambda p, x: fn(param_names(p), x), params)


def is_grassmann(path) -> bool:
  """A GCR class-basis leaf (``grassmann_*``, ``normjax.models.heads``): never decayed."""
  names = param_names(path)
  return bool(names) and names[-1].startswith("grassmann_")


def is_kernel(path) -> bool:
  """A Dense/Conv kernel: a leaf named ``kernel`` outside norm layers (not biases, gains,
  embeddings); the leaves ``normjax.models.weight_compander`` reparameterizes."""
  names = param_names(path)
  return bool(names) and names[-1] == "kernel" and not is_norm_param(path)


@register("decay")
def decay_mask(params):
  """True where weight decay applies: every leaf with ndim >= 2 outside norm layers.

  Skips biases (also 2-D ones, named ``bias``), norm scales/biases (any parameter of a
  module whose attribute name contains ``norm``), other vectors such as gains, and GCR's
  orthonormal class bases (``grassmann_*``).
  """
  return jax.tree_util.tree_map_with_path(
    lambda p, x: x.ndim >= 2 and not is_norm_param(p) and not is_bias(p) and not is_grassmann(p),
    params,
  )


@register("no_decay")
def no_decay(params):
  """True for norm parameters, biases and other vectors: the complement of ``decay_mask``."""
  return jax.tree.map(lambda d: not d, decay_mask(params))


@register("kernels")
def kernels(params):
  """True for every Dense/Conv kernel (``is_kernel``)."""
  return jax.tree_util.tree_map_with_path(lambda p, x: is_kernel(p), params)


@register("decay_except_kernels")
def decay_except_kernels(params):
  """``decay_mask`` without the Dense/Conv kernels: for Weight Compander with fixed (a, b),
  whose kernels are decayed through Psi(v) by a loss term instead."""
  return jax.tree.map(lambda d, k: d and not k, decay_mask(params), kernels(params))


@register("matrices")
def matrices(params):
  """True for every leaf with ndim >= 2 (kernels, embeddings, convolutions)."""
  return jax.tree.map(lambda x: x.ndim >= 2, params)


@register("norm_affine")
def norm_affine(params):
  """True only for the parameters of norm layers (their scale/bias or gains).

  The mask for "Training BatchNorm and only BatchNorm" (Frankle et al., ICLR 2021):
  ``optax.masked`` / ``optax.partition`` with ``optax.set_to_zero()`` elsewhere.
  """
  return jax.tree_util.tree_map_with_path(lambda p, x: is_norm_param(p), params)


def is_head_param(path) -> bool:
  """A leaf of the model's output layer (a top-level module named ``head``)."""
  names = param_names(path)
  return bool(names) and names[0] == "head"


@register("head")
def head(params):
  """True only for the output layer: a linear probe on random features (the control of
  Frankle et al. for BN-only training)."""
  return jax.tree_util.tree_map_with_path(lambda p, x: is_head_param(p), params)


@register("norm_affine_and_head")
def norm_affine_and_head(params):
  """The norm layers' parameters and the output layer (Frankle et al.'s "BN + output")."""
  return jax.tree_util.tree_map_with_path(lambda p, x: is_norm_param(p) or is_head_param(p), params)


def _in_block(names: Sequence[str], tokens: Iterable[str]) -> bool:
  modules = [n.lower() for n in names[:-1]]
  return any(t in m for m in modules for t in tokens)


@register("attention_mlp_kernels")
def attention_mlp_kernels(params, *, attention_names=ATTENTION_NAMES, mlp_names=MLP_NAMES):
  """True for the kernels of attention and MLP blocks: Conda's parameter grouping.

  jie040109/Conda:examples/gpt2/train.py gives Conda the weights of every Linear whose
  module name contains "attn" or "mlp"; embeddings, the LM head, norms and biases go to
  AdamW. Here: leaves with ndim >= 2 not named ``bias``, outside norm layers, under a
  module whose name contains one of ``attention_names`` or ``mlp_names``
  (case-insensitive substrings).
  """
  tokens = tuple(attention_names) + tuple(mlp_names)
  return _map(
    lambda names, x: (
      x.ndim >= 2
      and names[-1] != "bias"
      and _in_block(names, tokens)
      and not any("norm" in n.lower() for n in names[:-1])
    ),
    params,
  )


class MatrixAxes(NamedTuple):
  """Which axes of a kernel form the rows (reduction/input) and columns (output).

  Same fields as ``optax.contrib.MuonDimensionNumbers`` / ``GaLoreDimensionNumbers``:
  the kernel is read as a ``(prod(reduction), prod(output))`` matrix.
  """

  reduction_axis: Union[int, Sequence[int]] = 0
  output_axis: Union[int, Sequence[int]] = 1


def kernel_axes(
  names: Sequence[str], x, *, output_projection_names=OUTPUT_PROJECTION_NAMES
) -> MatrixAxes:
  """The matrix view of a Flax kernel ``x`` at path ``names``.

  2-D kernels are ``(in, out)``. A 3-D+ attention kernel from ``nnx.MultiHeadAttention``
  / ``DenseGeneral`` is ``(in, heads, head_dim)`` for the query/key/value projections
  (reduction = axis 0) and ``(heads, head_dim, out)`` for the output projection, which is
  recognised by its module name (one of ``output_projection_names``; reduction = every
  axis but the last).
  """
  if x.ndim == 2:
    return MatrixAxes(0, 1)
  module = names[-2].lower() if len(names) >= 2 else ""
  if module in output_projection_names:
    return MatrixAxes(tuple(range(x.ndim - 1)), x.ndim - 1)
  return MatrixAxes(0, tuple(range(1, x.ndim)))


@register("attention_mlp_dimension_numbers")
def attention_mlp_dimension_numbers(
  params,
  *,
  attention_names=ATTENTION_NAMES,
  mlp_names=MLP_NAMES,
  output_projection_names=OUTPUT_PROJECTION_NAMES,
):
  """``MatrixAxes`` for each attention/MLP kernel (see ``kernel_axes``), ``None`` elsewhere.

  Pass as ``conda_mask`` to run Conda on 3-D attention kernels too.
  """
  mask = attention_mlp_kernels(params, attention_names=attention_names, mlp_names=mlp_names)

  def spec(path, x, m):
    if not m:
      return None
    return kernel_axes(param_names(path), x, output_projection_names=output_projection_names)

  return jax.tree_util.tree_map_with_path(spec, params, mask)


@register("conda_groups")
def conda_groups(params, **kwargs):
  """``'conda'`` for attention/MLP kernels, ``'adamw'`` elsewhere (for ``optax.partition``)."""
  return jax.tree.map(lambda m: "conda" if m else "adamw", attention_mlp_kernels(params, **kwargs))


@register("muon_groups")
def muon_groups(params, **kwargs):
  """``'muon'`` for attention/MLP kernels, ``'adamw'`` elsewhere: the Muon baseline's grouping
  in jie040109/Conda (``examples/gpt2/train.py``) and Moonlight (embeddings, head, norms and
  biases on AdamW)."""
  return jax.tree.map(lambda m: "muon" if m else "adamw", attention_mlp_kernels(params, **kwargs))


MANIFOLD_PREFIXES = {"spd_": "spd", "stiefel_": "stiefel", "grassmann_": "grassmann"}


@register("manifold_groups")
def manifold_groups(params):
  """``'spd'`` for leaves named ``spd_*``, ``'stiefel'`` for ``stiefel_*``, ``'grassmann'`` for
  ``grassmann_*`` (GCR's class bases, ``normjax.optim.grassmann_rsgd``), ``'euclidean'``
  elsewhere: the groups of ``normjax.optim.spd_rsgd`` / ``stiefel_rsgd`` and the Euclidean
  optimizer (``models/spdnet.py`` names its manifold parameters so; the official
  ``MixOptimizer`` sorts parameters by their class, ``SPDParameter`` / ``StiefelParameter``)."""

  def label(names, x):
    for prefix, group in MANIFOLD_PREFIXES.items():
      if names and names[-1].startswith(prefix):
        return group
    return "euclidean"

  return _map(label, params)


@register("scale_invariant")
def scale_invariant(params, patterns: Iterable[str] = ()):
  """True for leaves whose ``'/'``-joined path matches one of ``patterns`` (``fnmatch``).

  ``patterns`` name the weights directly followed by a normalization in your model, e.g.
  ``('*conv*/kernel',)`` for a ResNet whose convolutions all feed a BatchNorm, or
  ``('*/attn/query/kernel', '*/attn/key/kernel')`` with QK-norm. Use
  ``probe_scale_invariance`` to measure it instead. Matching is case-sensitive.
  """
  if isinstance(patterns, str):
    patterns = (patterns,)
  patterns = tuple(patterns)
  return _map(
    lambda names, x: any(fnmatch.fnmatchcase("/".join(names), p) for p in patterns), params
  )


def probe_scale_invariance(
  apply_fn: Callable,
  params,
  *inputs,
  candidates=None,
  scales: Sequence[float] = (0.5, 2.0),
  rtol: float = 1e-4,
):
  """Measures which leaves are layer-wise scale-invariant: ``apply_fn(params, *inputs)``
  is unchanged (to ``rtol`` of its largest entry) when the leaf is multiplied by each of
  ``scales``.

  Args:
    apply_fn: ``(params, *inputs) -> outputs`` (any pytree of arrays). For BatchNorm use
      training mode (batch statistics); running averages are not scale-invariant. It is
      jitted: pass NNX model state as one of ``inputs``, e.g.
      ``lambda p, x, rest: nnx.merge(graphdef, p, rest)(x)``.
    params: the params pytree.
    *inputs: a small batch.
    candidates: a bool tree (or ``fn(params)``) of leaves to test; default ``matrices``.
    scales: multipliers tried; all must leave the output unchanged.
    rtol: tolerance relative to ``max |output|``; use float32 (or float64) params.

  Returns:
    A bool tree with the structure of ``params`` (False for leaves not tested).
  """
  if candidates is None:
    candidates = matrices(params)
  elif callable(candidates):
    candidates = candidates(params)
  leaves, treedef = jax.tree.flatten(params)
  flags = treedef.flatten_up_to(candidates)

  @jax.jit
  def output(leaves, multipliers, inputs):
    scaled = treedef.unflatten([x * m.astype(x.dtype) for x, m in zip(leaves, multipliers)])
    return apply_fn(scaled, *inputs)

  scaled_output = lambda multipliers: output(leaves, multipliers, inputs)

  ones = [jnp.ones((), jnp.float32) for _ in leaves]
  base = jax.tree.leaves(scaled_output(ones))
  size = max(float(np.max(np.abs(np.asarray(y, np.float64)))) for y in base) or 1.0
  result = []
  for i, flag in enumerate(flags):
    invariant = bool(flag)
    for c in scales if invariant else ():
      multipliers = list(ones)
      multipliers[i] = jnp.asarray(c, jnp.float32)
      out = jax.tree.leaves(scaled_output(multipliers))
      diff = max(
        float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))
        for a, b in zip(out, base)
      )
      invariant = invariant and diff <= rtol * size
    result.append(invariant)
  return treedef.unflatten(result)


def resolve(labels, **kwargs):
  """A label function from a registered name (with ``kwargs`` bound), or ``labels`` as is.

  Lets configs give masks and partitions by name: ``resolve('no_decay')`` is
  ``no_decay``; trees and the registered functions pass through unchanged; any other
  function is wrapped so that it labels a scanned transformer stack as it labels each of
  its layers (``normjax.stack_layout.per_layer_labels``, which registered ones already are).
  """
  if isinstance(labels, str):
    fn = LABELS.get(labels)
    return per_layer_labels(lambda params: fn(params, **kwargs)) if kwargs else fn
  if kwargs:
    raise ValueError(
      f"label keyword arguments {sorted(kwargs)} need a label name, got {type(labels).__name__}"
    )
  return per_layer_labels(labels) if callable(labels) else labels  # (idempotent)
