"""Transformer parts shared by ViT and GPT-2: attention, MLP, block, and the norm placement.

Norm placement lives in one table, ``PLACEMENTS``. For each sublayer f (attention, MLP) a
``Placement`` says which of three norms exist; ``residual_branch`` applies them:

    x <- residual_norm( x + dropout( output_norm( f( input_norm(x) ) ) ) )

* ``pre``  (GPT-2, ViT; Xiong et al. 2020): input norm only, plus a final norm after the last block.
* ``post`` (Vaswani et al. 2017): residual norm only, no final norm.

Peri-LN (Kim et al. 2025: input and output norm, final norm) is one more table entry; the
optional norm on the embeddings is the ``embedding_norm`` argument of ``Transformer``.
Dropout (rate ``dropout``) acts on the embeddings and on each residual branch's output, as
nanoGPT's resid_dropout; not on attention probabilities or the MLP hidden layer.
Norm attributes: ``attn_norm``/``mlp_norm`` (input), ``attn_output_norm``/``mlp_output_norm``,
``attn_residual_norm``/``mlp_residual_norm``, ``embedding_norm``, ``final_norm``; an absent
norm is ``None``.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from normjax.models import check_choice, check_divisible
from normjax.norms import make_norm

Initializer = Callable[..., jax.Array]


@dataclasses.dataclass(frozen=True)
class Placement:
  """Which norms a transformer block and stack create (see the module docstring)."""
  input_norm: bool
  output_norm: bool
  residual_norm: bool
  final_norm: bool


PLACEMENTS = {
    "pre": Placement(input_norm=True, output_norm=False, residual_norm=False, final_norm=True),
    "post": Placement(input_norm=False, output_norm=False, residual_norm=True, final_norm=False),
}


@dataclasses.dataclass(frozen=True)
class LinearInits:
  """Initializers of a block's linear layers (kernels are (in, out); biases start at zero).

  ``qkv_kernel`` initializes each of the q, k, v column blocks of the fused projection
  separately (so fan-in/fan-out match three separate (width, width) projections).
  """
  qkv_kernel: Initializer
  attn_out_kernel: Initializer
  mlp_hidden_kernel: Initializer
  mlp_out_kernel: Initializer
  mlp_bias: Initializer = nnx.initializers.zeros_init()


def stacked_init(init: Initializer, parts: int) -> Initializer:
  """Initializes a (..., parts * n) kernel as ``parts`` independent (..., n) kernels."""
  def init_fn(key, shape, dtype=jnp.float32):
    *leading, out = shape
    keys = jax.random.split(key, parts)
    return jnp.concatenate([init(k, (*leading, out // parts), dtype) for k in keys], axis=-1)
  return init_fn


class MultiHeadSelfAttention(nnx.Module):
  """Self-attention with a fused (width, 3*width) q|k|v projection and an output projection.

  softmax(q k^T / sqrt(head_dim) [+ causal mask]) v per head, via
  ``jax.nn.dot_product_attention`` (which picks cuDNN flash attention where available).
  """

  def __init__(self, width: int, num_heads: int, *, causal: bool, inits: LinearInits,
               dtype, rngs: nnx.Rngs):
    self.num_heads, self.causal = num_heads, causal
    self.qkv = nnx.Linear(width, 3 * width, kernel_init=stacked_init(inits.qkv_kernel, 3),
                          dtype=dtype, rngs=rngs)
    self.proj = nnx.Linear(width, width, kernel_init=inits.attn_out_kernel, dtype=dtype,
                           rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    batch, length, width = x.shape
    qkv = self.qkv(x).reshape(batch, length, 3, self.num_heads, width // self.num_heads)
    query, key, value = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    out = jax.nn.dot_product_attention(query, key, value, is_causal=self.causal)
    return self.proj(out.reshape(batch, length, width))


class Mlp(nnx.Module):
  """fc2(gelu(fc1(x))) with the tanh-approximate GELU (GPT-2's and big_vision's choice)."""

  def __init__(self, width: int, hidden: int, *, inits: LinearInits, dtype, rngs: nnx.Rngs):
    self.fc1 = nnx.Linear(width, hidden, kernel_init=inits.mlp_hidden_kernel,
                          bias_init=inits.mlp_bias, dtype=dtype, rngs=rngs)
    self.fc2 = nnx.Linear(hidden, width, kernel_init=inits.mlp_out_kernel,
                          bias_init=inits.mlp_bias, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.fc2(jax.nn.gelu(self.fc1(x), approximate=True))


def residual_branch(x, sublayer, *, input_norm=None, output_norm=None, residual_norm=None,
                    dropout=None, mask=None):
  """x <- residual_norm(x + dropout(output_norm(sublayer(input_norm(x))))); None = skip."""
  h = x if input_norm is None else input_norm(x, mask=mask)
  h = sublayer(h)
  if output_norm is not None:
    h = output_norm(h, mask=mask)
  if dropout is not None:
    h = dropout(h)
  x = x + h
  return x if residual_norm is None else residual_norm(x, mask=mask)


def _dropout(rate: float, rngs: nnx.Rngs):
  if not 0.0 <= rate < 1.0:
    raise ValueError(f"model argument dropout={rate!r}: must be in [0, 1)")
  return nnx.Dropout(rate, rngs=rngs) if rate > 0 else None


class TransformerBlock(nnx.Module):
  """Attention then MLP, each a residual branch with the norms its ``placement`` asks for."""

  def __init__(self, width: int, num_heads: int, mlp_dim: int, *, norm: str,
               norm_kwargs: dict, placement: str, causal: bool, dropout: float,
               inits: LinearInits, dtype, rngs: nnx.Rngs):
    where = PLACEMENTS[check_choice("placement", placement, PLACEMENTS)]
    maybe_norm = lambda wanted: (make_norm(norm, width, rngs=rngs, **norm_kwargs)
                                 if wanted else None)
    self.attn_norm = maybe_norm(where.input_norm)
    self.attn = MultiHeadSelfAttention(width, num_heads, causal=causal, inits=inits,
                                       dtype=dtype, rngs=rngs)
    self.attn_output_norm = maybe_norm(where.output_norm)
    self.attn_residual_norm = maybe_norm(where.residual_norm)
    self.attn_dropout = _dropout(dropout, rngs)
    self.mlp_norm = maybe_norm(where.input_norm)
    self.mlp = Mlp(width, mlp_dim, inits=inits, dtype=dtype, rngs=rngs)
    self.mlp_output_norm = maybe_norm(where.output_norm)
    self.mlp_residual_norm = maybe_norm(where.residual_norm)
    self.mlp_dropout = _dropout(dropout, rngs)

  def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    x = residual_branch(x, self.attn, input_norm=self.attn_norm,
                        output_norm=self.attn_output_norm, residual_norm=self.attn_residual_norm,
                        dropout=self.attn_dropout, mask=mask)
    return residual_branch(x, self.mlp, input_norm=self.mlp_norm,
                           output_norm=self.mlp_output_norm, residual_norm=self.mlp_residual_norm,
                           dropout=self.mlp_dropout, mask=mask)


class Transformer(nnx.Module):
  """[embedding_norm] -> embedding dropout -> ``depth`` blocks -> [final_norm].

  Input: the summed token/patch and position embeddings (B, T, width); ``mask`` (B, T), True =
  real token, goes to every norm. The final norm exists when the placement asks for one.
  """

  def __init__(self, *, depth: int, width: int, num_heads: int, mlp_dim: int, norm: str,
               norm_kwargs: dict | None, placement: str, causal: bool, dropout: float,
               inits: LinearInits, dtype, embedding_norm: bool = False, rngs: nnx.Rngs):
    check_choice("placement", placement, PLACEMENTS)
    check_divisible("width", width, "num_heads", num_heads)
    if depth < 1:
      raise ValueError(f"model argument depth={depth!r}: must be >= 1")
    norm_kwargs = dict(norm_kwargs or {})
    self.embedding_norm = (make_norm(norm, width, rngs=rngs, **norm_kwargs)
                           if embedding_norm else None)
    self.embedding_dropout = _dropout(dropout, rngs)
    self.blocks = nnx.List([
        TransformerBlock(width, num_heads, mlp_dim, norm=norm, norm_kwargs=norm_kwargs,
                         placement=placement, causal=causal, dropout=dropout, inits=inits,
                         dtype=dtype, rngs=rngs)
        for _ in range(depth)])
    self.final_norm = (make_norm(norm, width, rngs=rngs, **norm_kwargs)
                       if PLACEMENTS[placement].final_norm else None)

  def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    if self.embedding_norm is not None:
      x = self.embedding_norm(x, mask=mask)
    if self.embedding_dropout is not None:
      x = self.embedding_dropout(x)
    for block in self.blocks:
      x = block(x, mask)
    return x if self.final_norm is None else self.final_norm(x, mask=mask)
