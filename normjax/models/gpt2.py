"""GPT-2 (Radford et al. 2019) as in karpathy/nanoGPT:model.py, in Flax NNX.

tokens (B, T) -> token + learned position embeddings -> [dropout] -> depth x causal transformer
block -> final norm (pre placement) -> logits = h @ wte^T (head tied to the token embedding),
returned in float32.

Init (nanoGPT ``_init_weights``): every linear kernel and both embeddings ~ N(0, 0.02), biases
0, and the two projections that write into the residual stream (attention ``proj``, MLP ``fc2``)
~ N(0, 0.02 / sqrt(2 * depth)). GPT-2 small (vocab 50257, max_len 1024, width 768, depth 12,
12 heads) has 124,439,808 parameters. Differences from nanoGPT: no dropout on the attention
probabilities (``jax.nn.dot_product_attention`` has none), the tanh-approximate GELU of the
original GPT-2 (nanoGPT uses the exact one), and any registered norm / placement. Norm epsilon
follows flax (1e-6); GPT-2/PyTorch's LayerNorm uses ``norm_kwargs={'epsilon': 1e-5}``.

``tie_embeddings=False`` gives a separate head ``Linear(width, vocab)`` WITH a bias (it holds a
folded final-norm bias after ``normjax.surgery.conversions`` / ``normjax.surgery.folding``).
With a ``compressed_residual`` norm (CRMSNorm) the embeddings and the residual stream are
width - 1 wide (``normjax.models.transformer``). ``zero_mean_writers``: see there.

Padding and decoding: ``model(tokens, mask)`` with ``mask`` (B, T), True = real token, masks
padding keys in every attention and numbers positions from each row's first real token,
``positions = max(cumsum(mask) - 1, 0)`` (as ``transformers``' GPT-2 ``generate`` does for
left-padded prompts), so a padded row computes what the row alone computes. ``positions``
(B, T) may also be given. With ``cache=model.init_cache(batch, length)`` the call returns
``(logits, cache)``: the prefill and decode steps of ``normjax.tools.sample``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from normjax.models import check_choice, compute_dtype, register
from normjax.models.soft_attention import ATTENTIONS
from normjax.models.transformer import AttentionCache, LinearInits, Transformer, residual_width


def _embedded_sharding(tokens: jax.Array) -> jax.sharding.PartitionSpec | None:
  """Sharding of the looked-up embeddings: the tokens' own, when they carry one.

  Under an explicit-sharding mesh (``jax.set_mesh``) a gather needs its output sharding
  spelled out; elsewhere the spec is all None and the plain lookup is used.
  """
  spec = jax.typeof(tokens).sharding.spec
  if all(axis is None for axis in spec):
    return None
  return jax.sharding.PartitionSpec(*spec, None)


@register("gpt2")
class GPT2(nnx.Module):
  """Decoder-only causal language model.

  Args:
    vocab_size: number of token ids.
    max_len: longest sequence (rows of the position embedding).
    width: model width; depth: number of blocks; num_heads: attention heads.
    mlp_ratio: MLP hidden width = mlp_ratio * width.
    placement: norm placement in the blocks (``normjax.models.transformer.PLACEMENTS``).
    dropout: rate on the embeddings and on each residual branch's output.
    norm: a name in ``normjax.norms.NORMS``; norm_kwargs: its keyword arguments.
    dtype: 'float32' or 'bfloat16' activations (parameters stay float32).
    embedding_norm: also normalize the summed embeddings before the first block.
    tie_embeddings: logits = h @ wte^T (nanoGPT); False: a separate head with a bias.
    zero_mean_writers: the zero-mean reparameterisation of the residual-stream writers.
    remat: per-block rematerialisation policy (``normjax.models.remat``).
    scan_layers: store the blocks stacked and run them in ``nnx.scan``
      (``normjax.models.layer_stack``).
    attention: 'softmax' only (SOFT's attentions are non-causal; ``normjax.models.vit``).
    sharing: 'none' | 'weights' | 'all', parameter sharing across depth
      (``normjax.models.sharing``); moe: None or the fields of ``normjax.models.moe.MoeConfig``
      (the MLPs become mixtures of experts: WideNet, ``configs/gpt2_widenet.py``).
    rngs: ``nnx.Rngs`` for parameters (and dropout, when dropout > 0).
  """

  task = "lm"  # the data task it trains on (normjax.tasks)

  def __init__(
    self,
    *,
    vocab_size: int,
    max_len: int,
    width: int,
    depth: int,
    num_heads: int,
    mlp_ratio: int = 4,
    placement: str = "pre",
    dropout: float = 0.0,
    norm: str = "layernorm",
    norm_kwargs: dict | None = None,
    dtype: str = "float32",
    embedding_norm: bool = False,
    tie_embeddings: bool = True,
    zero_mean_writers: bool = False,
    remat: str = "none",
    scan_layers: bool = False,
    attention: str = "softmax",
    sharing: str = "none",
    moe: dict | None = None,
    rngs: nnx.Rngs,
  ):
    if check_choice("attention", attention, ATTENTIONS) != "softmax":
      raise ValueError(
        f"model argument attention={attention!r}: SOFT attention is non-causal (its landmarks "
        "pool a 2-D token map), so GPT-2 supports attention='softmax' only"
      )
    self.dtype = compute_dtype(dtype)
    self.max_len = max_len
    stream = residual_width(norm, width)
    normal = nnx.initializers.normal(0.02)
    residual_normal = nnx.initializers.normal(0.02 / math.sqrt(2 * depth))
    inits = LinearInits(
      qkv_kernel=normal,
      attn_out_kernel=residual_normal,
      mlp_hidden_kernel=normal,
      mlp_out_kernel=residual_normal,
    )
    self.token_embedding = nnx.Embed(
      vocab_size, stream, embedding_init=normal, dtype=self.dtype, rngs=rngs
    )
    self.position_embedding = nnx.Embed(
      max_len, stream, embedding_init=normal, dtype=self.dtype, rngs=rngs
    )
    self.transformer = Transformer(
      depth=depth,
      width=width,
      num_heads=num_heads,
      mlp_dim=mlp_ratio * width,
      norm=norm,
      norm_kwargs=norm_kwargs,
      placement=placement,
      causal=True,
      dropout=dropout,
      inits=inits,
      dtype=self.dtype,
      embedding_norm=embedding_norm,
      zero_mean_writers=zero_mean_writers,
      remat=remat,
      scan_layers=scan_layers,
      sharing=sharing,
      moe=moe,
      rngs=rngs,
    )
    self.head = (
      nnx.data(None)
      if tie_embeddings
      else nnx.Linear(stream, vocab_size, kernel_init=normal, dtype=self.dtype, rngs=rngs)
    )

  def init_cache(self, batch: int, length: int, mask=None):
    """An empty key/value cache of ``length`` slots per block; ``mask`` (B, length) marks the
    slots that will hold padding (False)."""
    if length > self.max_len:
      raise ValueError(f"cache length {length} exceeds the model's max_len={self.max_len}")
    return self.transformer.init_cache(batch, length, self.dtype, mask)

  def __call__(
    self,
    tokens: jax.Array,
    mask: jax.Array | None = None,
    *,
    positions: jax.Array | None = None,
    cache: tuple[AttentionCache, ...] | None = None,
  ):
    """int tokens (B, T) -> float32 logits (B, T, vocab_size) (``(logits, cache)`` with a
    ``cache``); ``mask`` and ``positions``: see the module docstring."""
    length = tokens.shape[-1]
    if length > self.max_len:
      raise ValueError(f"sequence length {length} exceeds the model's max_len={self.max_len}")
    if positions is None:
      if cache is not None:
        raise ValueError("decoding with a cache needs the tokens' positions (B, T)")
      positions = (
        jnp.arange(length)
        if mask is None
        else jnp.maximum(jnp.cumsum(jnp.asarray(mask, jnp.int32), axis=-1) - 1, 0)
      )
    x = self.token_embedding(
      tokens, out_sharding=_embedded_sharding(tokens)
    ) + self.position_embedding(positions)
    if cache is None:
      h = self.transformer(x, mask, tokens=tokens)
    else:
      h, cache = self.transformer(x, mask, tokens=tokens, cache=cache)
    logits_dtype = jnp.promote_types(h.dtype, jnp.float32)  # float32, or float64 for float64
    if self.head is not None:
      logits = self.head(h).astype(logits_dtype)
    else:
      wte = self.token_embedding.embedding[...].astype(h.dtype)
      logits = jnp.einsum("btc,vc->btv", h, wte, preferred_element_type=logits_dtype)
    return logits if cache is None else (logits, cache)
