r"""Group-wise min-max quantization (Q-GaLore's) and quantized weight storage with its own apply.

Zhang, Jaiswal, Yin, Liu, Zhao, Tian, Wang, "Q-GaLore: Quantized GaLore with INT4 Projection
and Layer-Adaptive Low-Rank Gradients", arXiv 2407.08296. The scheme of the official code,
VITA-Group/Q-GaLore: ``q_galore_torch/q_galore_projector.py:_quantize`` (projectors),
``q_galore_adamw8bit.py:_quantize`` / ``_quantize_stochastic_round`` / ``_dequantize`` and
``utils/quantization.py:_quantize_tensor_int8`` (weights). For ``n`` bits and one group
``w`` of ``group_size`` consecutive entries (row-major order of the flattened tensor)::

  s = max(max(w) - min(w), 1e-5) / (2^n - 1)          (one scale per group)
  z = clip(-round(min(w) / s), 0, 2^n - 1)             (one zero point per group)
  q = clip(round(w / s) + z, 0, 2^n - 1)               (round to nearest, half to even)
  q = clip(floor(w / s) + [u < w/s - floor(w/s)] + z, 0, 2^n - 1),  u ~ U[0, 1)
                                                        (stochastic rounding)
  w ~ s (q - z)                                        (dequantized)

When a group's range contains 0, the round-to-nearest error is at most s/2 entrywise and
stochastic rounding is unbiased, E[s (q - z)] = w. The official code needs the tensor's
size to be a multiple of ``group_size``; here a last, shorter group is padded with its
own last entry (which changes neither its min nor its max) and the padding is dropped, so
sizes that divide give the official groups exactly.

Storage. ``q`` is uint8; with ``pack=True`` and n in {1, 2, 4}, 8 // n codes share one
byte (the official code stores one 4-bit code per byte, so its "INT4" projector takes the
bytes of an INT8 one; ``jnp.uint4`` arrays are not packed on CPU either: ``nbytes`` is one
byte per entry, measured with jax 0.10.2). Scales and zeros are float32 (float64 for float64
tensors), one each per group.

Weights (``quantized_weights``): the chosen leaves of the params are stored as
``QuantizedArray(q, scale, zero)`` (q with the leaf's shape, uint8; round to nearest at
init, as ``QGaLoreLinear``); ``decode`` dequantizes them for the forward pass, and
``apply(stored, updates, step)`` replaces ``optax.apply_updates``: ``w = s (q - z) + u``,
then re-quantized with a fresh min/max per group, by stochastic rounding with the key
``fold_in(fold_in(key(seed), step), leaf index)`` (so a resumed run draws the same bits)
or by round to nearest. ``float_weights()`` is the identity storage (``apply`` is
``optax.apply_updates``); ``normjax.run.Setup`` uses one of the two in its train step.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from normjax.optim._transforms import bool_mask

ROUNDINGS = ("stochastic", "nearest")


class QuantizedArray(NamedTuple):
  """A group-quantized tensor: codes (uint8; packed or with the tensor's shape), and one
  scale and zero point per group, shape ``(groups, 1)``, float32 (float64 for float64)."""

  q: jax.Array
  scale: jax.Array
  zero: jax.Array


def check_quantization(bits, group_size, *, names=("bits", "group_size")) -> None:
  """Fails with a message naming the argument (``names``) unless both are valid."""
  if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 8:
    raise ValueError(f"{names[0]}={bits!r}: must be an integer in 1..8 (codes are uint8)")
  if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
    raise ValueError(f"{names[1]}={group_size!r}: must be a positive integer (e.g. 256)")


def _groups(x, group_size: int):
  """``x`` flattened into rows of ``group_size``; a short last row is padded with its last
  entry (min and max unchanged)."""
  flat = x.reshape(-1)
  pad = -flat.size % group_size
  if pad:
    flat = jnp.pad(flat, (0, pad), mode="edge")
  return flat.reshape(-1, group_size)


def quantize(
  w, bits: int, group_size: int, key: Optional[jax.Array] = None, *, pack: bool = False
) -> QuantizedArray:
  """``w`` quantized per group (module docstring): stochastic rounding when ``key`` is
  given, round to nearest otherwise. ``pack``: 8 // bits codes per byte (bits 1, 2, 4)."""
  dtype = jnp.promote_types(w.dtype, jnp.float32)
  wg = _groups(w.astype(dtype), group_size)
  top = 2**bits - 1
  lo, hi = wg.min(axis=1, keepdims=True), wg.max(axis=1, keepdims=True)
  scale = jnp.maximum(hi - lo, 1e-5) / top
  zero = jnp.clip(-jnp.round(lo / scale), 0, top)
  ratio = wg / scale
  if key is None:
    codes = jnp.round(ratio)
  else:
    down = jnp.floor(ratio)
    codes = down + (jax.random.uniform(key, ratio.shape, ratio.dtype) < ratio - down)
  codes = jnp.clip(codes + zero, 0, top).astype(jnp.uint8)
  codes = pack_codes(codes, bits) if pack else codes.reshape(-1)[: w.size].reshape(w.shape)
  return QuantizedArray(codes, scale.astype(dtype), zero.astype(dtype))


def dequantize(
  qa: QuantizedArray, shape, dtype, bits: int, group_size: int, *, pack: bool = False
) -> jax.Array:
  """``s (q - z)`` with ``shape`` and ``dtype`` (computed in the scales' dtype)."""
  size = 1
  for d in shape:
    size *= d
  groups = qa.scale.shape[0]
  if pack:
    codes = unpack_codes(qa.q, bits, groups * group_size)
  else:
    codes = _groups(qa.q, group_size)
  values = qa.scale * (codes.reshape(groups, group_size).astype(qa.scale.dtype) - qa.zero)
  return values.reshape(-1)[:size].reshape(shape).astype(dtype)


def pack_codes(codes, bits: int):
  """Codes < 2**bits (any shape) as a flat uint8 array, 8 // bits codes per byte."""
  if 8 % bits:
    raise ValueError(f"bits={bits}: packing needs bits in (1, 2, 4, 8)")
  per = 8 // bits
  flat = codes.reshape(-1).astype(jnp.uint8)
  pad = -flat.size % per
  if pad:
    flat = jnp.pad(flat, (0, pad))
  shifts = jnp.arange(per, dtype=jnp.uint8) * bits
  return jnp.sum(flat.reshape(-1, per) << shifts, axis=1, dtype=jnp.uint8)


def unpack_codes(packed, bits: int, size: int):
  """Inverse of ``pack_codes``: the first ``size`` codes, flat uint8."""
  per = 8 // bits
  shifts = jnp.arange(per, dtype=jnp.uint8) * bits
  codes = (packed[:, None] >> shifts) & jnp.uint8(2**bits - 1)
  return codes.reshape(-1)[:size]


# ------------------------------------------------------------------------ weight storage
class WeightStorage(NamedTuple):
  """How the train state holds the weights, and how an update is applied to them.

  ``init(params) -> stored``, ``decode(stored) -> params`` (float, for the forward pass and
  the optimizer), ``apply(stored, updates, step) -> stored`` (instead of
  ``optax.apply_updates``; ``step`` is the int32 step count before this update).
  """

  init: Callable[[Any], Any]
  decode: Callable[[Any], Any]
  apply: Callable[[Any, Any, jax.Array], Any]


def _is_quantized(x) -> bool:
  return isinstance(x, QuantizedArray)


def float_weights() -> WeightStorage:
  """Weights stored as they are; ``apply`` is ``optax.apply_updates``."""
  return WeightStorage(
    init=lambda params: params,
    decode=lambda stored: stored,
    apply=lambda stored, updates, step: optax.apply_updates(stored, updates),
  )


def quantized_weights(
  bits: int = 8,
  group_size: int = 256,
  rounding: str = "stochastic",
  mask: Any = "attention_mlp_kernels",
  *,
  seed: int = 0,
  dtype: Any = jnp.float32,
) -> WeightStorage:
  """Q-GaLore's INT8 weights (module docstring) for the leaves ``mask`` selects.

  Args:
    bits, group_size: the quantization (official: 8 bits, groups of 256).
    rounding: 'stochastic' (``--stochastic_round``) or 'nearest' (without it).
    mask: a ``labels.LABELS`` name, ``fn(params)`` or bool tree; default: the attention
      and MLP kernels (the official q/k/v/o/gate/up/down projections).
    seed: the stochastic rounding's base key; step and leaf index are folded in.
    dtype: the dtype of the decoded weights.
  """
  check_quantization(bits, group_size, names=("weight_quant.bits", "weight_quant.group_size"))
  if rounding not in ROUNDINGS:
    raise ValueError(f"weight_quant.rounding={rounding!r}: one of {', '.join(ROUNDINGS)}")
  base_key = jax.random.key(seed)

  def init(params):
    chosen = bool_mask(mask, params, name="weight_quant mask")
    return jax.tree.map(lambda x, m: quantize(x, bits, group_size) if m else x, params, chosen)

  def decode_leaf(x):
    if _is_quantized(x):
      return dequantize(x, x.q.shape, dtype, bits, group_size)
    return x

  def decode(stored):
    return jax.tree.map(decode_leaf, stored, is_leaf=_is_quantized)

  def apply(stored, updates, step):
    key = jax.random.fold_in(base_key, step)
    leaves, treedef = jax.tree.flatten(stored, is_leaf=_is_quantized)
    new = []
    for i, (x, u) in enumerate(zip(leaves, treedef.flatten_up_to(updates))):
      if not _is_quantized(x):
        new.append(jnp.asarray(x + u).astype(jnp.asarray(x).dtype))
        continue
      wide = jnp.promote_types(dtype, jnp.float32)
      w = decode_leaf(x).astype(wide) + u.astype(wide)
      leaf_key = jax.random.fold_in(key, i) if rounding == "stochastic" else None
      new.append(quantize(w, bits, group_size, leaf_key))
    return treedef.unflatten(new)

  return WeightStorage(init, decode, apply)
