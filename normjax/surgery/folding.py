"""Fold norms whose eval mode is affine into the adjacent linear layer, for inference.

In eval mode BatchNorm, PowerNorm, Unified Normalization and a frozen FakeLN are maps

    y = P(r(x)) * a + c        (per channel a, c; r = PowerNorm's GroupScaling, else identity;
                                P = centering x - mean_d(x) for FakeLN, else identity)

and a linear layer next to them absorbs the map (the paper of UN reports ~31% faster inference
from this; its official code ships no fusion script). With kernels laid out (in, out):

* norm then linear (W, b) (``attn_norm`` -> ``qkv``, ``mlp_norm`` -> ``fc1``, ``final_norm`` ->
  head): W' = P(diag(a) W) with P(M) = M - mean over rows, b' = b + c W.
* linear then norm (Peri-LN output norms: ``proj`` -> ``attn_output_norm``, ``fc2`` ->
  ``mlp_output_norm``): W' = (W - mean over columns, if centering) diag(a),
  b' = (b - mean(b), if centering) * a + c.

``fold_norms(model)`` returns an eval-mode copy of a ViT or GPT-2 whose norms are replaced by
``Identity`` (or PowerNorm's ``GroupScaling``) and whose linear layers hold the folded weights.
A GPT-2 with a tied head keeps it: its final norm becomes an explicit ``ChannelAffine`` (an
elementwise map on (B, T, d), nearly free, where folding would untie a (d, vocab) head and add a
(B, T, vocab) bias: slower, measured in benchmarks.md); ``untie_head=True`` folds it anyway
(the last block's output then reaches the logits through one linear map). Norms that normalize
per token (LayerNorm, RMSNorm, a live FakeLN) or sit where no linear layer is adjacent
(post/residual norms, the embedding norm, a PowerNorm output norm) raise a ValueError naming
the norm.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
from flax import nnx

from normjax.norms.base import Norm
from normjax.norms.basic import Identity
from normjax.norms.fakeln import FakeLN
from normjax.norms.powernorm import GroupScaling, PowerNorm


@dataclasses.dataclass
class EvalMap:
  """y = P(remainder(x)) * scale + shift (see the module docstring)."""

  scale: jnp.ndarray
  shift: jnp.ndarray
  centered: bool = False
  remainder: nnx.Module | None = None


def _is_foldable(norm: Norm) -> bool:
  return isinstance(norm, FakeLN) or norm.eval_affine is not None


def _refuse(norm: nnx.Module):
  raise ValueError(
    f"{type(norm).__name__} normalizes each token/example by its own statistics "
    f"in eval mode; only affine-in-eval norms (BatchNorm, PowerNorm, UnifiedNorm, "
    f"frozen FakeLN) can be folded"
  )


def check_foldable(model: nnx.Module):
  """Structural checks (no array is touched): ValueError naming what cannot be folded."""
  stack = model.transformer
  if stack.embedding_norm is not None:
    raise ValueError("embedding_norm: folding it into the embeddings is not implemented")
  for i, block in enumerate(stack.block_list("fold_norms")):
    for name in ("attn_residual_norm", "mlp_residual_norm"):
      if getattr(block, name) is not None:
        raise ValueError(
          f"blocks[{i}].{name}: a norm after the residual add (post placement) "
          f"has no adjacent linear layer to fold into"
        )
    for name in ("attn_norm", "mlp_norm", "attn_output_norm", "mlp_output_norm"):
      norm = getattr(block, name)
      if norm is not None and not _is_foldable(norm):
        _refuse(norm)
      if name.endswith("output_norm") and isinstance(norm, PowerNorm):
        raise ValueError(
          f"blocks[{i}].{name}: a PowerNorm after a linear layer cannot be "
          f"folded into it: GroupScaling sits between the layer and the affine map"
        )
  if stack.final_norm is not None and not _is_foldable(stack.final_norm):
    _refuse(stack.final_norm)


def eval_map(norm: nnx.Module, value_path: bool = False) -> EvalMap:
  """The eval-mode affine map of ``norm`` (for FakeLN's V path: ``value_path=True``)."""
  features = norm.num_features
  if isinstance(norm, FakeLN):
    params = norm.params()
    scale = params.get("scale", jnp.ones((features,), jnp.float32))
    bias = params.get("bias", jnp.zeros((features,), jnp.float32))
    if not bool(norm.is_frozen(value_path)):
      raise ValueError(
        f"FakeLN at step {int(norm.step[...])} is still live (freeze step "
        f"{norm.value_freeze_step if value_path else norm.freeze_step}): it "
        f"normalizes per token and cannot be folded"
      )
    return EvalMap(scale / norm.frozen_std(value_path), bias, centered=True)
  if isinstance(norm, PowerNorm):
    a, c = norm.eval_affine()
    return EvalMap(a, c, remainder=GroupScaling(features, norm.groups))
  if norm.eval_affine is not None:
    return EvalMap(*norm.eval_affine())
  _refuse(norm)


def fold_into_next(m: EvalMap, kernel, bias):
  """(kernel, bias) of ``x -> map(x) @ kernel + bias`` as one linear layer."""
  folded = m.scale[:, None] * kernel
  if m.centered:
    folded = folded - jnp.mean(folded, axis=0, keepdims=True)
  return folded, bias + m.shift @ kernel


def fold_into_previous(m: EvalMap, kernel, bias):
  """(kernel, bias) of ``h -> map(h @ kernel + bias)`` as one linear layer."""
  if m.remainder is not None:
    raise ValueError(
      "a PowerNorm after a linear layer cannot be folded into it: GroupScaling "
      "sits between the layer and the affine map"
    )
  if m.centered:
    kernel = kernel - jnp.mean(kernel, axis=-1, keepdims=True)
    bias = bias - jnp.mean(bias)
  return kernel * m.scale, bias * m.scale + m.shift


def _set(linear: nnx.Linear, kernel, bias):
  linear.kernel[...] = kernel.astype(linear.kernel[...].dtype)
  linear.bias[...] = bias.astype(linear.bias[...].dtype)


class ChannelAffine(Norm):
  """The eval map y = P(remainder(x)) * scale + shift as a module (no statistics)."""

  def __init__(self, m: EvalMap):
    super().__init__(int(m.scale.shape[-1]))
    self.scale, self.shift = nnx.Param(m.scale), nnx.Param(m.shift)
    self.centered, self.remainder = m.centered, m.remainder

  def __call__(self, x, mask=None):
    h = x if self.remainder is None else self.remainder(x)
    if self.centered:
      h = h - jnp.mean(h, axis=-1, keepdims=True)
    return (h * self.scale[...] + self.shift[...]).astype(x.dtype)


def _replacement(m: EvalMap, features: int) -> nnx.Module:
  return m.remainder if m.remainder is not None else Identity(features)


def _fold_block(block):
  qkv = block.attn.qkv
  if block.attn_norm is not None:
    main = eval_map(block.attn_norm)
    kernel, bias = fold_into_next(main, qkv.kernel[...], qkv.bias[...])
    if block.attn_norm.separate_value_path:
      split = 2 * block.attn.width
      value = eval_map(block.attn_norm, value_path=True)
      v_kernel, v_bias = fold_into_next(value, qkv.kernel[...][:, split:], qkv.bias[...][split:])
      kernel = jnp.concatenate([kernel[:, :split], v_kernel], axis=-1)
      bias = jnp.concatenate([bias[:split], v_bias])
    _set(qkv, kernel, bias)
    block.attn_norm = _replacement(main, block.attn_norm.num_features)
  if block.mlp_norm is not None:
    m = eval_map(block.mlp_norm)
    _set(block.mlp.fc1, *fold_into_next(m, block.mlp.fc1.kernel[...], block.mlp.fc1.bias[...]))
    block.mlp_norm = _replacement(m, block.mlp_norm.num_features)
  for norm_name, linear in (
    ("attn_output_norm", block.attn.proj),
    ("mlp_output_norm", block.mlp.fc2),
  ):
    norm = getattr(block, norm_name)
    if norm is not None:
      m = eval_map(norm)
      _set(linear, *fold_into_previous(m, linear.kernel[...], linear.bias[...]))
      setattr(block, norm_name, Identity(norm.num_features))


def fold_norms(model: nnx.Module, untie_head: bool = False) -> nnx.Module:
  """An eval-mode copy of a ViT / GPT-2 with every norm folded into its adjacent linear layer
  (a tied GPT-2 head: see the module docstring)."""
  check_foldable(model)
  model = nnx.clone(model)
  model.eval()
  stack = model.transformer
  for block in stack.blocks:
    _fold_block(block)
  if stack.final_norm is not None:
    m = eval_map(stack.final_norm)
    head = getattr(model, "head", None)
    if head is None and not untie_head:  # GPT-2 with tied embeddings: logits = h @ wte^T
      stack.final_norm = ChannelAffine(m)
      return model
    if head is None:
      wte = model.token_embedding.embedding[...]
      head = nnx.Linear(wte.shape[1], wte.shape[0], dtype=model.dtype, rngs=nnx.Rngs(0))
      _set(head, wte.T, jnp.zeros((wte.shape[0],), jnp.float32))
      model.head = head
    _set(head, *fold_into_next(m, head.kernel[...], head.bias[...]))
    stack.final_norm = _replacement(m, stack.final_norm.num_features)
  return model


__all__ = [
  "ChannelAffine",
  "EvalMap",
  "check_foldable",
  "eval_map",
  "fold_into_next",
  "fold_into_previous",
  "fold_norms",
]
