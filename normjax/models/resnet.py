"""ResNet (He et al. 2016) v1.5 in Flax NNX, laid out as torchvision's resnet.py.

stem -> stages of residual blocks (the first block of stages 2.. downsamples by 2, on its 3x3
conv) -> global average pool -> linear head.

* stem 'imagenet': 7x7 stride-2 conv, norm + ReLU, 3x3 stride-2 max pool (padding 1);
  stem 'cifar': 3x3 stride-1 conv, norm + ReLU, no pooling.
* blocks: 'basic' (two 3x3 convs) or 'bottleneck' (1x1, 3x3, 1x1 with 4x expansion); the
  shortcut is a 1x1 conv + norm (no activation) when the shape changes, else the identity;
  ReLU after the residual add.
* every norm is a ``NormAct`` (norm then ReLU, or one layer that fuses its own activation);
  convs have no bias and He (fan-out, normal) init as torchvision; with
  ``zero_init_residual`` the last norm of each block starts with scale 0 (Goyal et al. 2017),
  so every block starts as the identity.
* padding k // 2 on every conv, as torchvision (not 'SAME'), so strided layers align the same.
* ``conv``: 'standard', 'ws' (Weight Standardization, for BCN/GN; ``models/ws_conv.py``) or
  'scaled_ws' (Scaled WS with gain and bias).
* ``ibn='a'`` / ``'b'``: IBN-Net (Pan et al., ECCV 2018; XingangPan/IBN-Net
  ``ibnnet/resnet_ibn.py``) on a BatchNorm ResNet. IBN-a: the first norm of every block in all
  stages but the last is ``ibn`` (InstanceNorm on half the channels, ``norms/ibn.py``); IBN-b:
  the stem norm is a full-width InstanceNorm (affine, eps 1e-5) and, in the first two stages
  (never the last), the LAST block adds a full-width InstanceNorm after the residual add,
  before the ReLU -- as the official ``_make_layer``, a stage's first block never does, so a
  one-block stage has none. The official 4-stage pattern is ('a', 'a', 'a', None) /
  ('b', 'b', None, None); "all but the last" / "the first two, not the last" generalise it.
  One BatchNorm momentum per model: the IBN layers take the plain BatchNorms' (the official
  code uses PyTorch's 0.1, i.e. 0.9 here, everywhere; ``configs/resnet_ibn.py`` sets it, and a
  ResNet without ``norm_kwargs`` uses flax's 0.99 everywhere, as ``configs/resnet_batchnorm.py``).

* ``attention``: a channel attention at the end of every block's residual branch (after the
  last conv + norm, before the shortcut is added): 'none', 'se', 'ca', 'ela_t' | 'ela_b' |
  'ela_s' | 'ela_l' (ELA, Xu & Wan 2024), 'ela_bn'; ``models/channel_attention.py``.

ResNet-50 = stage_sizes (3, 4, 6, 3), 'bottleneck', width 64, 'imagenet' stem: 25,557,032
parameters with 1000 classes. ResNet-18 = (2, 2, 2, 2), 'basic'. The BatchNorm default keeps
flax's momentum 0.99; torchvision's (PyTorch momentum 0.1) is ``norm_kwargs={'momentum': 0.9}``.

Extension points: ``BLOCKS`` (block name -> class taking (in_features, features, *, strides,
conv, norm_act, zero_init_residual)) and ``CONVS`` (conv name -> factory), both chosen by config.
"""

from __future__ import annotations

import functools
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from normjax.models import check_choice, compute_dtype, conv_kernel_init, register
from normjax.models import remat as remat_lib
from normjax.models.channel_attention import ATTENTIONS, make_attention
from normjax.models.heads import make_head
from normjax.models.pooling import max_pool
from normjax.models.ws_conv import scaled_ws_conv_layer, ws_conv_layer
from normjax.norms import NORMS, make_norm
from normjax.norms.basic import BATCH_NORM_MOMENTUM

STEMS = ("cifar", "imagenet")
# torchvision's kaiming_normal_(mode='fan_out', nonlinearity='relu'): N(0, 2 / (kh*kw*out))
HE_INIT = conv_kernel_init(nnx.initializers.variance_scaling(2.0, "fan_out", "normal"), "fan_out")


ConvFactory = Callable[..., nnx.Module]  # (in, out, kernel_size, *, strides=1)
NormActFactory = Callable[..., nnx.Module]  # (features, *, apply_act, zero_init_scale)


def conv_layer(
  in_features: int, out_features: int, kernel_size: int, *, strides: int = 1, dtype, rngs: nnx.Rngs
) -> nnx.Conv:
  """Bias-free square conv with torchvision padding (k // 2 on each side) and He init."""
  pad = kernel_size // 2
  return nnx.Conv(
    in_features,
    out_features,
    (kernel_size, kernel_size),
    strides=(strides, strides),
    padding=((pad, pad), (pad, pad)),
    use_bias=False,
    kernel_init=HE_INIT,
    dtype=dtype,
    rngs=rngs,
  )


CONVS = {"standard": conv_layer, "ws": ws_conv_layer, "scaled_ws": scaled_ws_conv_layer}
IBN_VARIANTS = (None, "a", "b")


def check_stages(stage_sizes, width: int):
  """ValueError unless ``stage_sizes`` holds positive block counts and ``width`` >= 1."""
  if not stage_sizes or any(int(n) < 1 for n in stage_sizes):
    raise ValueError(
      f"model argument stage_sizes={stage_sizes!r}: needs one or more "
      f"positive block counts, e.g. (2, 2, 2, 2)"
    )
  if width < 1:
    raise ValueError(f"model argument width={width!r}: must be a positive channel count")


class NormAct(nnx.Module):
  """A norm followed by ReLU (``apply_act``), as one unit.

  A norm class with ``fuses_activation = True`` (EvoNorm) is built with ``apply_act`` and
  applies its own nonlinearity; nothing is added after it. ``zero_init_scale`` sets the
  norm's ``scale`` parameter, if it has one, to 0.
  """

  def __init__(
    self,
    num_features: int,
    *,
    norm: str,
    norm_kwargs: dict,
    apply_act: bool = True,
    zero_init_scale: bool = False,
    rngs: nnx.Rngs,
  ):
    if NORMS.get(norm).fuses_activation:
      self.norm = make_norm(norm, num_features, rngs=rngs, apply_act=apply_act, **norm_kwargs)
      self.apply_relu = False
    else:
      self.norm = make_norm(norm, num_features, rngs=rngs, **norm_kwargs)
      self.apply_relu = apply_act
    scale = getattr(self.norm, "scale", None)
    if zero_init_scale and isinstance(scale, nnx.Param):
      scale[...] = jnp.zeros_like(scale[...])

  def __call__(self, x: jax.Array) -> jax.Array:
    y = self.norm(x)
    return jax.nn.relu(y) if self.apply_relu else y


class ProjectionShortcut(nnx.Module):
  """1x1 (strided) conv + norm without activation, for a block whose shape changes."""

  def __init__(
    self,
    in_features: int,
    out_features: int,
    *,
    strides: int,
    conv: ConvFactory,
    norm_act: NormActFactory,
  ):
    self.conv = conv(in_features, out_features, 1, strides=strides)
    self.norm_act = norm_act(out_features, apply_act=False)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.norm_act(self.conv(x))


def make_shortcut(in_features, out_features, *, strides, conv, norm_act):
  """A ``ProjectionShortcut`` when the shape changes, else None (identity)."""
  if strides == 1 and in_features == out_features:
    return None
  return ProjectionShortcut(
    in_features, out_features, strides=strides, conv=conv, norm_act=norm_act
  )


class BasicBlock(nnx.Module):
  """relu(norm(conv3x3(relu(norm(conv3x3(x))))) + shortcut(x)); output width = features.

  Optional (IBN-Net): ``first_norm_act`` builds the first NormAct instead of ``norm_act``;
  ``post_add_norm`` (features -> module) normalizes the sum before the final ReLU.
  """

  expansion = 1

  def __init__(
    self,
    in_features: int,
    features: int,
    *,
    strides: int,
    conv: ConvFactory,
    norm_act: NormActFactory,
    zero_init_residual: bool,
    first_norm_act: NormActFactory | None = None,
    post_add_norm: NormActFactory | None = None,
    attention: Callable[[int], nnx.Module | None] | None = None,
  ):
    self.conv1 = conv(in_features, features, 3, strides=strides)
    self.norm_act1 = (first_norm_act or norm_act)(features)
    self.conv2 = conv(features, features, 3)
    self.norm_act2 = norm_act(features, apply_act=False, zero_init_scale=zero_init_residual)
    self.shortcut = make_shortcut(
      in_features, features, strides=strides, conv=conv, norm_act=norm_act
    )
    self.post_add_norm = post_add_norm(features) if post_add_norm else None
    self.attention = attention(features) if attention else None

  def __call__(self, x: jax.Array) -> jax.Array:
    y = self.norm_act1(self.conv1(x))
    y = self.norm_act2(self.conv2(y))
    return _add_and_activate(self, y, x)


class BottleneckBlock(nnx.Module):
  """1x1 (reduce) -> 3x3 (strided) -> 1x1 (expand x4), each conv + NormAct, plus shortcut.

  ``first_norm_act`` / ``post_add_norm``: as ``BasicBlock`` (IBN-Net).
  """

  expansion = 4

  def __init__(
    self,
    in_features: int,
    features: int,
    *,
    strides: int,
    conv: ConvFactory,
    norm_act: NormActFactory,
    zero_init_residual: bool,
    first_norm_act: NormActFactory | None = None,
    post_add_norm: NormActFactory | None = None,
    attention: Callable[[int], nnx.Module | None] | None = None,
  ):
    out_features = features * self.expansion
    self.conv1 = conv(in_features, features, 1)
    self.norm_act1 = (first_norm_act or norm_act)(features)
    self.conv2 = conv(features, features, 3, strides=strides)
    self.norm_act2 = norm_act(features)
    self.conv3 = conv(features, out_features, 1)
    self.norm_act3 = norm_act(out_features, apply_act=False, zero_init_scale=zero_init_residual)
    self.shortcut = make_shortcut(
      in_features, out_features, strides=strides, conv=conv, norm_act=norm_act
    )
    self.post_add_norm = post_add_norm(out_features) if post_add_norm else None
    self.attention = attention(out_features) if attention else None

  def __call__(self, x: jax.Array) -> jax.Array:
    y = self.norm_act1(self.conv1(x))
    y = self.norm_act2(self.conv2(y))
    y = self.norm_act3(self.conv3(y))
    return _add_and_activate(self, y, x)


def _add_and_activate(block, y: jax.Array, x: jax.Array) -> jax.Array:
  """relu(post_add_norm(attention(y) + shortcut(x))), each only when the block has it."""
  y = y if getattr(block, "attention", None) is None else block.attention(y)
  y = y + (x if block.shortcut is None else block.shortcut(x))
  return jax.nn.relu(y if block.post_add_norm is None else block.post_add_norm(y))


BLOCKS = {"basic": BasicBlock, "bottleneck": BottleneckBlock}


@register("resnet")
class ResNet(nnx.Module):
  """ResNet classifier on channels-last images.

  Args:
    num_classes: logits per image; in_channels: image channels.
    stage_sizes: blocks per stage, e.g. (2, 2, 2, 2) for ResNet-18, (3, 4, 6, 3) for ResNet-50.
    block: a key of ``BLOCKS`` ('basic' or 'bottleneck').
    width: channels of the stem and first stage (doubled per stage).
    stem: 'cifar' (3x3 stride 1, no pool) or 'imagenet' (7x7 stride 2 + 3x3 max pool).
    norm: a name in ``normjax.norms.NORMS``; norm_kwargs: its keyword arguments.
    zero_init_residual: start each block's last norm scale at 0.
    dtype: 'float32' or 'bfloat16' activations (parameters stay float32).
    conv: a key of ``CONVS``: the conv layer factory (in, out, kernel_size, *, strides, dtype,
      rngs) used everywhere ('standard' = ``conv_layer``, 'ws', 'scaled_ws').
    ibn: None, 'a' or 'b': an IBN-Net variant (needs norm='batchnorm'; its IBN layers take
      the model's BatchNorm ``momentum`` -- ``norm_kwargs['momentum']``, else BatchNorm's
      default 0.99 -- and ``epsilon``); see the module docstring.
    remat: per-block rematerialisation policy (``normjax.models.remat``).
    head, head_kwargs: 'linear' | 'cosine' | 'grassmann' (GCR) and its keyword arguments
      (``normjax.models.heads``).
    attention: a channel attention at the end of each residual branch, one of
      ``channel_attention.ATTENTIONS`` ('none', 'se', 'ca', 'ela_t', 'ela_b', 'ela_s',
      'ela_l', 'ela_bn'); see the module docstring.
    rngs: ``nnx.Rngs`` for parameters.
  """

  task = "classification"  # the data task it trains on (normjax.tasks)

  def __init__(
    self,
    *,
    num_classes: int,
    in_channels: int = 3,
    stage_sizes: Sequence[int] = (2, 2, 2, 2),
    block: str = "basic",
    width: int = 64,
    stem: str = "cifar",
    norm: str = "batchnorm",
    norm_kwargs: dict | None = None,
    zero_init_residual: bool = True,
    dtype: str = "float32",
    conv: str = "standard",
    ibn: str | None = None,
    remat: str = "none",
    head: str = "linear",
    head_kwargs: dict | None = None,
    attention: str = "none",
    rngs: nnx.Rngs,
  ):
    check_choice("attention", attention, ATTENTIONS)
    block_class = BLOCKS[check_choice("block", block, BLOCKS)]
    self.remat = remat_lib.check(remat)
    check_choice("ibn", ibn, IBN_VARIANTS)
    if ibn is not None and norm != "batchnorm":
      raise ValueError(
        f"model argument ibn={ibn!r} with norm={norm!r}: IBN-Net variants mix "
        f"InstanceNorm into a BatchNorm ResNet; use norm='batchnorm'"
      )
    conv_factory = CONVS[check_choice("conv", conv, CONVS)]
    check_choice("stem", stem, STEMS)
    check_stages(stage_sizes, width)
    norm_kwargs = dict(norm_kwargs or {})
    self.dtype = compute_dtype(dtype)
    self.stem_max_pool = stem == "imagenet"
    make_conv = functools.partial(conv_factory, dtype=self.dtype, rngs=rngs)
    norm_act = functools.partial(NormAct, norm=norm, norm_kwargs=norm_kwargs, rngs=rngs)
    self.stem_conv = make_conv(
      in_channels, width, 7 if stem == "imagenet" else 3, strides=2 if stem == "imagenet" else 1
    )
    # IBN-Net: InstanceNorm as the official PyTorch layer (affine, eps 1e-5); the IBN layers'
    # BatchNorm part uses the model's BatchNorm momentum (given or the default), so a model
    # never mixes two momenta (the IBN layer's own default is PyTorch's 0.9).
    instance_norm_act = functools.partial(
      NormAct, norm="instancenorm", norm_kwargs={"epsilon": 1e-5}, rngs=rngs
    )
    ibn_kwargs = {"momentum": norm_kwargs.get("momentum", BATCH_NORM_MOMENTUM)}
    if "epsilon" in norm_kwargs:
      ibn_kwargs["epsilon"] = norm_kwargs["epsilon"]
    ibn_norm_act = functools.partial(NormAct, norm="ibn", rngs=rngs, norm_kwargs=ibn_kwargs)
    self.stem_norm_act = (instance_norm_act if ibn == "b" else norm_act)(width)
    stages, in_features = [], width
    last_stage = len(stage_sizes) - 1
    for stage, num_blocks in enumerate(stage_sizes):
      features, blocks = width * 2**stage, []
      for index in range(int(num_blocks)):
        extra = {}
        if attention != "none":
          extra["attention"] = functools.partial(
            make_attention, attention, dtype=self.dtype, rngs=rngs
          )
        if ibn == "a" and stage < last_stage:
          extra["first_norm_act"] = ibn_norm_act
        if ibn == "b" and stage < min(2, last_stage) and index == int(num_blocks) - 1 and index > 0:
          extra["post_add_norm"] = functools.partial(instance_norm_act, apply_act=False)
        blocks.append(
          block_class(
            in_features,
            features,
            strides=2 if stage > 0 and index == 0 else 1,
            conv=make_conv,
            norm_act=norm_act,
            zero_init_residual=zero_init_residual,
            **extra,
          )
        )
        in_features = features * block_class.expansion
      stages.append(nnx.List(blocks))
    self.stages = nnx.List(stages)
    self.head = make_head(head, in_features, num_classes, head_kwargs, dtype=self.dtype, rngs=rngs)

  def __call__(self, images: jax.Array) -> jax.Array:
    """float images (B, H, W, C) -> float32 logits (B, num_classes)."""
    x = self.stem_norm_act(self.stem_conv(images.astype(self.dtype)))
    if self.stem_max_pool:
      x = max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for stage in self.stages:
      for block in stage:
        x = remat_lib.call(block, x, remat=self.remat)
    return self.head(jnp.mean(x, axis=(1, 2))).astype(jnp.float32)
