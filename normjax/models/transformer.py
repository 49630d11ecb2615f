"""Transformer parts shared by ViT and GPT-2: attention, MLP, block, and the norm placement.

Norm placement lives in one table, ``PLACEMENTS``. For each sublayer f (attention, MLP) a
``Placement`` says which of three norms exist; ``residual_branch`` applies them:

    x <- residual_norm( x + dropout( output_norm( f( input_norm(x) ) ) ) )

* ``pre``  (GPT-2, ViT; Xiong et al. 2020): input norm only, plus a final norm after the last block.
* ``post`` (Vaswani et al. 2017): residual norm only, no final norm.
* ``peri`` (Peri-LN, Kim et al. 2025, arXiv 2502.02732): input AND output norm (on the module
  output, before the residual add; nothing on the residual path itself), plus the final norm;
  Gemma 2's block is this structure with RMSNorm. The optional norm on the embeddings is the
  ``embedding_norm`` argument of ``Transformer``.

Dropout (rate ``dropout``) acts on the embeddings and on each residual branch's output, as
nanoGPT's resid_dropout; not on attention probabilities or the MLP hidden layer.
Norm attributes: ``attn_norm``/``mlp_norm`` (input), ``attn_output_norm``/``mlp_output_norm``,
``attn_residual_norm``/``mlp_residual_norm``, ``embedding_norm``, ``final_norm``; an absent
norm is ``None``. The norms' traits (``normjax.norms.base.Norm``) are read as attributes: a norm
class with ``needs_site`` also receives ``site=NormSite(role, block, depth)`` (FakeLN's removal
schedule uses it); a final norm that ``needs_tokens`` receives the token ids.

Extensions used by the Pre-RMSNorm/CRMSNorm equivalence (``normjax.surgery.conversions``) and
LayerNorm removal (``normjax.norms.fakeln``):

* ``zero_mean_writers``: recentre everything written into the residual stream (the embeddings'
  sum and each branch output) over the feature axis in the forward. This is the zero-mean
  reparameterisation of Jiang et al. 2023 (``DenseZeroMeanOutput`` in
  ZixuanJiang/pre-rmsnorm-transformer:jax/model.py subtracts the kernel's and bias's mean over
  the output axis); centering the output h = xW + b equals using W - mean_out(W), b - mean(b).
  Exact with dropout 0 (dropout breaks the zero mean of a written vector in training).
* a norm class with ``compressed_residual = True`` (CRMSNorm) makes the residual stream
  ``width - 1`` wide: writers (embeddings, attention ``proj``, MLP ``fc2``) produce width-1
  coordinates and readers (``qkv``, ``fc1``, the head) take width-1 inputs; heads stay
  width/num_heads wide.
* an attention-input norm with ``separate_value_path`` (FakeLN) gives the attention two inputs,
  one for the Q/K projections and one for V (``MultiHeadSelfAttention(x, value_input)``), so
  LayerNorm removal can freeze the two uses of that norm separately.

Padding and decoding (``normjax.tools.sample``): ``mask`` (B, T), True = real token, reaches the
norms as before and, when given, the attention as a key mask (query i attends key j iff j <= i
for causal attention and ``mask[b, j]``); ``mask=None`` is the unmasked path, unchanged. With an
``AttentionCache`` per block (``Transformer(x, cache=...)``), the new tokens' keys and values
are written into the cache at slots ``index, index + 1, ...`` and the queries attend every
written slot ``<=`` their own that the cache's slot mask marks real: prefill and one-token
decode steps with fixed shapes, so a ``lax.fori_loop`` of decode steps compiles once.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from normjax.kernels import attention as attention_kernels
from normjax.models import check_choice, check_divisible, layer_stack
from normjax.models import moe as moe_lib
from normjax.models import remat as remat_lib
from normjax.models import sharing as sharing_lib
from normjax.norms import NORMS, make_norm

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
  "peri": Placement(input_norm=True, output_norm=True, residual_norm=False, final_norm=True),
}


@dataclasses.dataclass(frozen=True)
class NormSite:
  """Where a norm sits: ``role`` (embedding, attn_input, attn_output, attn_residual, mlp_input,
  mlp_output, mlp_residual, final), ``block`` index (None outside blocks), model ``depth``."""

  role: str
  block: int | None
  depth: int


def build_norm(norm: str, features: int, norm_kwargs: dict, site: NormSite, rngs: nnx.Rngs):
  """``make_norm`` plus ``site=`` for norm classes that declare ``needs_site``."""
  extra = {"site": site} if NORMS.get(norm).needs_site else {}
  return make_norm(norm, features, rngs=rngs, **norm_kwargs, **extra)


def residual_width(norm: str, width: int) -> int:
  """Width of the residual stream: ``width - 1`` for a norm with ``compressed_residual``."""
  return width - 1 if NORMS.get(norm).compressed_residual else width


def center(x: jax.Array) -> jax.Array:
  """x - mean over the feature axis (the zero-mean reparameterisation of a written vector)."""
  return x - jnp.mean(x, axis=-1, keepdims=True)


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


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class AttentionCache:
  """One attention layer's key/value cache for decoding (a pytree; see the module docstring).

  ``key``, ``value``: (B, heads, S, head_dim), heads-major so that neither the one-slot write
  nor the attention's contractions make XLA transpose the whole cache each step; ``index``:
  int32 (), the slots written so far (the next token goes to slot ``index``); ``mask``: bool
  (B, S), False for slots that hold padding (left-padded prompts), True elsewhere.
  """

  key: jax.Array
  value: jax.Array
  index: jax.Array
  mask: jax.Array

  @classmethod
  def empty(cls, batch, length, num_heads, head_dim, dtype, mask=None) -> "AttentionCache":
    zeros = jnp.zeros((batch, num_heads, length, head_dim), dtype)
    mask = jnp.ones((batch, length), bool) if mask is None else jnp.asarray(mask, bool)
    return cls(zeros, zeros, jnp.zeros((), jnp.int32), mask)


def attention(query, key, value, *, mask=None, is_causal: bool = False):
  """(B, T, H, D) -> (B, T, H, D) attention: ``normjax.kernels.attention`` (its implementation
  per backend: the causal-block-skipping form on CPU, ``jax.nn.dot_product_attention``
  elsewhere; ``NORMJAX_ATTENTION`` overrides)."""
  return attention_kernels.attention(query, key, value, mask=mask, is_causal=is_causal)


def cached_attention(query, key, value, cache: AttentionCache):
  """Writes ``key``/``value`` (B, T, H, D) at slots ``cache.index ...`` and attends causally
  over the written, real slots: ``(out (B, T, H, D), new cache)``. Scores and softmax in
  float32 (float64 for float64), as ``jax.nn.dot_product_attention``."""
  index = cache.index
  start = (0, 0, index, 0)
  heads_major = lambda x: jnp.swapaxes(x, 1, 2).astype(cache.key.dtype)
  keys = jax.lax.dynamic_update_slice(cache.key, heads_major(key), start)
  values = jax.lax.dynamic_update_slice(cache.value, heads_major(value), start)
  wide = jnp.promote_types(query.dtype, jnp.float32)
  scores = jnp.einsum(
    "bthd,bhsd->bhts", query, keys.astype(query.dtype), preferred_element_type=wide
  ) / jnp.sqrt(jnp.asarray(query.shape[-1], wide))
  query_slot = index + jnp.arange(query.shape[1])
  causal = jnp.arange(keys.shape[2])[None, :] <= query_slot[:, None]  # (T, S)
  allowed = causal[None, None] & cache.mask[:, None, None, :]  # (B, 1, T, S)
  probs = jax.nn.softmax(jnp.where(allowed, scores, jnp.finfo(wide).min), axis=-1)
  out = jnp.einsum("bhts,bhsd->bthd", probs.astype(query.dtype), values.astype(query.dtype))
  return out, AttentionCache(keys, values, index + query.shape[1], cache.mask)


class MultiHeadSelfAttention(nnx.Module):
  """Self-attention with a fused (stream, 3*width) q|k|v projection and an output projection.

  softmax(q k^T / sqrt(head_dim) [+ causal mask] [+ key padding mask]) v per head, via
  ``normjax.kernels.attention`` (block-skipping causal attention on CPU, jax's choice, cuDNN
  flash attention where it applies, elsewhere).
  ``stream_width`` is the residual stream's width (``width`` except for CRMSNorm models).
  ``value_input``, when given, feeds the V columns of the projection instead of ``x``.
  ``mask`` (B, T) bool, True = real token: keys that are padding get no attention.
  ``cache``: an ``AttentionCache`` (causal attention only); the call then returns
  ``(out, new_cache)``.
  """

  def __init__(
    self,
    width: int,
    num_heads: int,
    *,
    causal: bool,
    inits: LinearInits,
    dtype,
    rngs: nnx.Rngs,
    stream_width: int | None = None,
  ):
    stream_width = width if stream_width is None else stream_width
    self.width, self.num_heads, self.causal = width, num_heads, causal
    self.qkv = nnx.Linear(
      stream_width, 3 * width, kernel_init=stacked_init(inits.qkv_kernel, 3), dtype=dtype, rngs=rngs
    )
    self.proj = nnx.Linear(
      width, stream_width, kernel_init=inits.attn_out_kernel, dtype=dtype, rngs=rngs
    )

  def _split_qkv(self, x: jax.Array, value_input: jax.Array) -> jax.Array:
    kernel, bias = self.qkv.kernel[...].astype(x.dtype), self.qkv.bias[...].astype(x.dtype)
    split = 2 * self.width
    return jnp.concatenate(
      [x @ kernel[:, :split] + bias[:split], value_input @ kernel[:, split:] + bias[split:]],
      axis=-1,
    )

  def __call__(
    self,
    x: jax.Array,
    value_input: jax.Array | None = None,
    *,
    mask: jax.Array | None = None,
    cache: AttentionCache | None = None,
  ):
    batch, length, _ = x.shape
    qkv = self.qkv(x) if value_input is None else self._split_qkv(x, value_input)
    qkv = qkv.reshape(batch, length, 3, self.num_heads, self.width // self.num_heads)
    query, key, value = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    if cache is not None:
      if not self.causal:
        raise ValueError("a key/value cache needs causal attention (a decoder)")
      out, cache = cached_attention(query, key, value, cache)
      return self.proj(out.reshape(batch, length, self.width)), cache
    if mask is None:  # the training path
      out = attention(query, key, value, is_causal=self.causal)
    else:
      keys = jnp.asarray(mask, bool)[:, None, None, :]  # (B, 1, 1, T)
      out = attention(query, key, value, mask=keys, is_causal=self.causal)
    return self.proj(out.reshape(batch, length, self.width))


class Mlp(nnx.Module):
  """fc2(gelu(fc1(x))) with the tanh-approximate GELU (GPT-2's and big_vision's choice)."""

  def __init__(self, width: int, hidden: int, *, inits: LinearInits, dtype, rngs: nnx.Rngs):
    # width: the residual stream's width (inputs of fc1, outputs of fc2)
    self.fc1 = nnx.Linear(
      width,
      hidden,
      kernel_init=inits.mlp_hidden_kernel,
      bias_init=inits.mlp_bias,
      dtype=dtype,
      rngs=rngs,
    )
    self.fc2 = nnx.Linear(
      hidden,
      width,
      kernel_init=inits.mlp_out_kernel,
      bias_init=inits.mlp_bias,
      dtype=dtype,
      rngs=rngs,
    )

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.fc2(jax.nn.gelu(self.fc1(x), approximate=True))


def residual_branch(
  x,
  sublayer,
  *,
  input_norm=None,
  output_norm=None,
  residual_norm=None,
  dropout=None,
  mask=None,
  zero_mean=False,
):
  """x <- residual_norm(x + dropout(output_norm(sublayer(input_norm(x))))); None = skip.

  ``zero_mean`` recentres the written vector (after the output norm) over the feature axis.
  """
  h = x if input_norm is None else input_norm(x, mask=mask)
  h = sublayer(h)
  if output_norm is not None:
    h = output_norm(h, mask=mask)
  if zero_mean:
    h = center(h)
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

  def __init__(
    self,
    width: int,
    num_heads: int,
    mlp_dim: int,
    *,
    norm: str,
    norm_kwargs: dict,
    placement: str,
    causal: bool,
    dropout: float,
    inits: LinearInits,
    dtype,
    rngs: nnx.Rngs,
    index: int = 0,
    depth: int = 1,
    zero_mean_writers: bool = False,
    attention: Callable[..., nnx.Module] | None = None,
  ):
    where = PLACEMENTS[check_choice("placement", placement, PLACEMENTS)]
    stream = residual_width(norm, width)

    def maybe_norm(wanted, role):
      return (
        build_norm(norm, stream, norm_kwargs, NormSite(role, index, depth), rngs)
        if wanted
        else None
      )

    self.zero_mean_writers = zero_mean_writers
    self.attn_norm = maybe_norm(where.input_norm, "attn_input")
    self.attn = (attention or MultiHeadSelfAttention)(
      width, num_heads, causal=causal, inits=inits, dtype=dtype, rngs=rngs, stream_width=stream
    )
    self.attn_output_norm = maybe_norm(where.output_norm, "attn_output")
    self.attn_residual_norm = maybe_norm(where.residual_norm, "attn_residual")
    self.attn_dropout = _dropout(dropout, rngs)
    self.mlp_norm = maybe_norm(where.input_norm, "mlp_input")
    self.mlp = Mlp(stream, mlp_dim, inits=inits, dtype=dtype, rngs=rngs)
    self.mlp_output_norm = maybe_norm(where.output_norm, "mlp_output")
    self.mlp_residual_norm = maybe_norm(where.residual_norm, "mlp_residual")
    self.mlp_dropout = _dropout(dropout, rngs)

  def _attention_inputs(self, x, mask=None):
    """(Q/K input, V input or None) from the attention input norm."""
    if self.attn_norm is None:
      return x, None
    if self.attn_norm.separate_value_path:
      return self.attn_norm.qk_and_v(x, mask=mask)
    return self.attn_norm(x, mask=mask), None

  def __call__(
    self, x: jax.Array, mask: jax.Array | None = None, cache: AttentionCache | None = None
  ):
    """x (B, T, stream) -> x, or ``(x, new_cache)`` when a ``cache`` is given."""
    new_cache = []

    def attend(inputs):
      if cache is None:
        return self.attn(*inputs, mask=mask)
      out, updated = self.attn(*inputs, mask=mask, cache=cache)
      new_cache.append(updated)
      return out

    x = residual_branch(
      x,
      attend,
      input_norm=self._attention_inputs,
      output_norm=self.attn_output_norm,
      residual_norm=self.attn_residual_norm,
      dropout=self.attn_dropout,
      mask=mask,
      zero_mean=self.zero_mean_writers,
    )
    x = residual_branch(
      x,
      self.mlp,
      input_norm=self.mlp_norm,
      output_norm=self.mlp_output_norm,
      residual_norm=self.mlp_residual_norm,
      dropout=self.mlp_dropout,
      mask=mask,
      zero_mean=self.zero_mean_writers,
    )
    return x if cache is None else (x, new_cache[0])


class Transformer(nnx.Module):
  """[embedding_norm] -> embedding dropout -> ``depth`` blocks -> [final_norm].

  Input: the summed token/patch and position embeddings (B, T, stream width); ``mask`` (B, T),
  True = real token, goes to every norm and to the attention (padding keys are ignored);
  ``tokens`` (B, T) int ids, to the final norm when it ``needs_tokens``; ``cache``: one
  ``AttentionCache`` per block (decoding), then the call returns ``(x, new caches)``. The final
  norm exists when the placement asks for one.
  ``zero_mean_writers`` recentres the input embeddings and every branch output. ``remat``
  rematerialises each block in training (``normjax.models.remat``; decoding never does).
  ``attention``: a factory with ``MultiHeadSelfAttention``'s signature (default: that class),
  e.g. SOFT's (``normjax.models.soft_attention.attention_factory``).
  ``sharing`` ('none' | 'weights' | 'all', ``normjax.models.sharing``) shares modules across
  depth; ``moe`` (``normjax.models.moe.MoeConfig`` fields) replaces the MLPs by mixtures of
  experts (WideNet, arXiv 2107.11817). ``scan_layers`` stores the blocks as one block whose
  variables lead with a depth axis and runs them in ``nnx.scan`` (``normjax.models.layer_stack``):
  one block to compile instead of ``depth``.
  """

  def __init__(
    self,
    *,
    depth: int,
    width: int,
    num_heads: int,
    mlp_dim: int,
    norm: str,
    norm_kwargs: dict | None,
    placement: str,
    causal: bool,
    dropout: float,
    inits: LinearInits,
    dtype,
    embedding_norm: bool = False,
    zero_mean_writers: bool = False,
    remat: str = "none",
    attention: Callable[..., nnx.Module] | None = None,
    sharing: str = "none",
    moe=None,
    scan_layers: bool = False,
    rngs: nnx.Rngs,
  ):
    check_choice("placement", placement, PLACEMENTS)
    check_choice("sharing", sharing, sharing_lib.SHARING)
    moe = moe_lib.MoeConfig.parse(moe)
    check_divisible("width", width, "num_heads", num_heads)
    self.remat = remat_lib.check(remat)
    if depth < 1:
      raise ValueError(f"model argument depth={depth!r}: must be >= 1")
    norm_kwargs = dict(norm_kwargs or {})
    stream = residual_width(norm, width)
    self.zero_mean_writers = zero_mean_writers
    self.embedding_norm = (
      build_norm(norm, stream, norm_kwargs, NormSite("embedding", None, depth), rngs)
      if embedding_norm
      else None
    )
    self.embedding_dropout = _dropout(dropout, rngs)

    def block(i, rngs):
      return TransformerBlock(
        width,
        num_heads,
        mlp_dim,
        norm=norm,
        norm_kwargs=norm_kwargs,
        placement=placement,
        causal=causal,
        dropout=dropout,
        inits=inits,
        dtype=dtype,
        rngs=rngs,
        index=i,
        depth=depth,
        zero_mean_writers=zero_mean_writers,
        attention=attention,
      )

    self.depth = depth
    self.scan_layers = bool(scan_layers)
    if self.scan_layers:  # one block whose variables have a leading depth axis
      layer_stack.check_scannable(sharing=sharing, moe=moe)
      self.blocks = layer_stack.stacked(lambda r: block(0, r), depth, rngs)
      layer_stack.check_scannable_block(self.blocks)
    else:
      self.blocks = nnx.List([block(i, rngs) for i in range(depth)])
    if moe is not None:  # WideNet: the FFN becomes a mixture of experts (normjax.models.moe)
      moe_lib.install(
        self.blocks,
        moe,
        shared=sharing != "none",
        width=stream,
        hidden=mlp_dim,
        inits=inits,
        dtype=dtype,
        rngs=rngs,
      )
    if not self.scan_layers:
      sharing_lib.share_across_depth(self.blocks, sharing)  # normjax.models.sharing
    self.final_norm = (
      build_norm(norm, stream, norm_kwargs, NormSite("final", None, depth), rngs)
      if PLACEMENTS[placement].final_norm
      else None
    )

  def block_list(self, what: str) -> list:
    """The blocks as a list of modules, for code that edits or reads them one by one
    (surgery, Hugging Face export); a scanned stack is refused with the way out."""
    if self.scan_layers:
      raise ValueError(layer_stack.refusal(what))
    return list(self.blocks)

  def init_cache(self, batch: int, length: int, dtype, mask=None):
    """An empty key/value cache of ``length`` slots per block: a tuple of ``AttentionCache``
    (unrolled), or one ``AttentionCache`` whose leaves lead with the depth axis (scanned)."""
    attn = self.blocks.attn if self.scan_layers else self.blocks[0].attn
    one = AttentionCache.empty(
      batch, length, attn.num_heads, attn.width // attn.num_heads, dtype, mask
    )
    if self.scan_layers:
      return jax.tree.map(lambda a: jnp.broadcast_to(a, (self.depth, *a.shape)), one)
    return tuple(one for _ in range(self.depth))

  def __call__(
    self,
    x: jax.Array,
    mask: jax.Array | None = None,
    tokens: jax.Array | None = None,
    cache: tuple[AttentionCache, ...] | None = None,
  ):
    if self.embedding_norm is not None:
      x = self.embedding_norm(x, mask=mask)
    if self.zero_mean_writers:
      x = center(x)
    if self.embedding_dropout is not None:
      x = self.embedding_dropout(x)
    if self.scan_layers:
      x, new_cache = layer_stack.apply(self.blocks, x, mask, cache, remat=self.remat)
    else:
      x, new_cache = self._unrolled(x, mask, cache)
    if self.final_norm is not None:
      if self.final_norm.needs_tokens:
        x = self.final_norm(x, mask=mask, tokens=tokens)
      else:
        x = self.final_norm(x, mask=mask)
    return x if cache is None else (x, new_cache)

  def _unrolled(self, x, mask, cache):
    new_cache = []
    for i, block in enumerate(self.blocks):
      if cache is None:
        x = remat_lib.call(block, x, mask, remat=self.remat)
      else:
        x, layer_cache = block(x, mask, cache[i])
        new_cache.append(layer_cache)
    return x, tuple(new_cache)
