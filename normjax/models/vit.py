"""Vision Transformer (Dosovitskiy et al. 2021) in Flax NNX, following big_vision's models/vit.py.

images (B, H, W, C) -> patch_size x patch_size patches, linearly embedded (a strided conv)
-> [class token] + learned position embeddings -> [dropout] -> depth x transformer block
-> final norm (pre placement) -> class token or mean over tokens -> linear head -> logits.

Init as google-research/big_vision:big_vision/models/vit.py: patch embedding LeCun normal,
position embedding ~ N(0, 1/width), class token 0, attention and MLP kernels Xavier uniform (q, k,
v each on its own (width, width) fan), MLP biases ~ N(0, 1e-6), head zero-initialized (kernel
and bias). Unlike big_vision, the class token gets a position embedding too (as the original
google-research/vision_transformer), so ViT-B/16 at 224 px with 1000 classes has 86,567,656
parameters, the standard count. With a ``compressed_residual`` norm (CRMSNorm) the patch
embedding, class token, position embedding and residual stream are width - 1 wide;
``zero_mean_writers``: the zero-mean reparameterisation (``normjax.models.transformer``).
``attention`` other than 'softmax' is SOFT's softmax-free attention
(``normjax.models.soft_attention``; it needs ``pool='mean'``: the tokens form the H x W map).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from normjax.models import check_choice, check_divisible, compute_dtype, conv_kernel_init, register
from normjax.models.heads import make_head
from normjax.models.soft_attention import attention_factory
from normjax.models.transformer import LinearInits, Transformer, residual_width

POOLS = ("cls", "mean")


@register("vit")
class VisionTransformer(nnx.Module):
  """ViT classifier.

  Args:
    num_classes: logits per image.
    image_size: square input side in pixels; in_channels: image channels.
    patch_size: patch side; must divide image_size.
    width, depth, num_heads, mlp_dim: transformer sizes (ViT-B: 768, 12, 12, 3072).
    pool: 'cls' (prepend a class token, read it out) or 'mean' (average all tokens).
    placement: norm placement in the blocks (``normjax.models.transformer.PLACEMENTS``).
    dropout: rate on the embeddings and on each residual branch's output.
    norm: a name in ``normjax.norms.NORMS``; norm_kwargs: its keyword arguments.
    dtype: 'float32' or 'bfloat16' activations (parameters stay float32).
    embedding_norm: also normalize the embeddings before the first block.
    zero_mean_writers: the zero-mean reparameterisation of the residual-stream writers.
    remat: per-block rematerialisation policy (``normjax.models.remat``).
    scan_layers: store the blocks stacked and run them in ``nnx.scan``
      (``normjax.models.layer_stack``).
    head, head_kwargs: 'linear' | 'cosine' | 'grassmann' (GCR) and its keyword arguments
      (``normjax.models.heads``).
    attention: 'softmax' | 'soft' | 'soft_norm' | 'gaussian' (``normjax.models.soft_attention``);
      attention_kwargs: its options (ratio, conv_size, newton_iters, reg, distance).
    sharing: 'none' | 'weights' | 'all', parameter sharing across depth
      (``normjax.models.sharing``); moe: None or the fields of ``normjax.models.moe.MoeConfig``
      (the MLPs become mixtures of experts: WideNet, ``configs/vit_widenet.py``).
    rngs: ``nnx.Rngs`` for parameters (and dropout, when dropout > 0).
  """

  task = "classification"  # the data task it trains on (normjax.tasks)

  def __init__(
    self,
    *,
    num_classes: int,
    image_size: int,
    in_channels: int = 3,
    patch_size: int,
    width: int,
    depth: int,
    num_heads: int,
    mlp_dim: int,
    pool: str = "cls",
    placement: str = "pre",
    dropout: float = 0.0,
    norm: str = "layernorm",
    norm_kwargs: dict | None = None,
    dtype: str = "float32",
    embedding_norm: bool = False,
    zero_mean_writers: bool = False,
    remat: str = "none",
    scan_layers: bool = False,
    head: str = "linear",
    head_kwargs: dict | None = None,
    attention: str = "softmax",
    attention_kwargs: dict | None = None,
    sharing: str = "none",
    moe: dict | None = None,
    rngs: nnx.Rngs,
  ):
    check_choice("pool", pool, POOLS)
    check_divisible("image_size", image_size, "patch_size", patch_size)
    grid = (image_size // patch_size,) * 2
    attention_module = attention_factory(attention, attention_kwargs, grid)
    if attention_module is not None and pool != "mean":
      raise ValueError(f"model argument attention={attention!r} needs pool='mean' (no class token)")
    self.dtype = compute_dtype(dtype)
    self.image_size, self.in_channels, self.pool = image_size, in_channels, pool
    lecun = nnx.initializers.lecun_normal()
    stream = residual_width(norm, width)
    self.patch_embedding = nnx.Conv(
      in_channels,
      stream,
      (patch_size, patch_size),
      strides=(patch_size, patch_size),
      padding="VALID",
      kernel_init=conv_kernel_init(lecun, "fan_in"),
      dtype=self.dtype,
      rngs=rngs,
    )
    num_tokens = (image_size // patch_size) ** 2 + (pool == "cls")
    self.cls_token = (
      nnx.Param(jnp.zeros((stream,), jnp.float32)) if pool == "cls" else nnx.data(None)
    )
    position_init = nnx.initializers.normal(width**-0.5)
    self.position_embedding = nnx.Param(position_init(rngs.params(), (num_tokens, stream)))
    xavier = nnx.initializers.xavier_uniform()
    inits = LinearInits(
      qkv_kernel=xavier,
      attn_out_kernel=xavier,
      mlp_hidden_kernel=xavier,
      mlp_out_kernel=xavier,
      mlp_bias=nnx.initializers.normal(1e-6),
    )
    self.transformer = Transformer(
      depth=depth,
      width=width,
      num_heads=num_heads,
      mlp_dim=mlp_dim,
      norm=norm,
      norm_kwargs=norm_kwargs,
      placement=placement,
      causal=False,
      dropout=dropout,
      inits=inits,
      dtype=self.dtype,
      embedding_norm=embedding_norm,
      zero_mean_writers=zero_mean_writers,
      remat=remat,
      scan_layers=scan_layers,
      attention=attention_module,
      sharing=sharing,
      moe=moe,
      rngs=rngs,
    )
    self.head = make_head(
      head,
      stream,
      num_classes,
      head_kwargs,
      kernel_init=nnx.initializers.zeros_init(),
      dtype=self.dtype,
      rngs=rngs,
    )

  def __call__(self, images: jax.Array) -> jax.Array:
    """float images (B, H, W, C) -> float32 logits (B, num_classes)."""
    expected = (self.image_size, self.image_size, self.in_channels)
    if tuple(images.shape[1:]) != expected:
      raise ValueError(
        f"ViT built for images of shape (B, {', '.join(map(str, expected))}) got {images.shape}"
      )
    x = self.patch_embedding(images.astype(self.dtype))
    x = x.reshape(x.shape[0], -1, x.shape[-1])
    if self.cls_token is not None:
      # zeros_like(x[:, :1]) + cls rather than broadcast_to: it keeps x's batch sharding,
      # which concatenate needs under an explicit-sharding mesh.
      cls = jnp.zeros_like(x[:, :1]) + self.cls_token[...].astype(x.dtype)
      x = jnp.concatenate([cls, x], axis=1)
    x = self.transformer(x + self.position_embedding[...].astype(x.dtype))
    pooled = x[:, 0] if self.pool == "cls" else jnp.mean(x, axis=1)
    return self.head(pooled).astype(jnp.float32)
