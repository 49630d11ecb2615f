"""Channel attentions for ResNet blocks: SE, Coordinate Attention and ELA (channels-last).

Each module maps x (B, H, W, C) -> x * gate, the gate in (0, 1) from a sigmoid. In
``normjax.models.resnet`` (``ResNet(attention=...)``) it sits at the END of the residual
branch: after the block's last conv + norm, before the shortcut is added (the placement of
SE-ResNet, of Coordinate Attention's MobileNetV2/ResNet blocks and, as third-party ELA
plug-ins use it, of ELA).

* ``SqueezeExcitation`` (Hu et al., CVPR 2018, arXiv 1709.01507), reduction r = 16:
    s = mean_{H,W} x;  g = sigmoid(W2 relu(W1 s + b1) + b2),  W1: C -> C/r, W2: C/r -> C;
    y = x * g[:, None, None, :].
* ``CoordinateAttention`` (Hou, Zhou, Feng, CVPR 2021, arXiv 2103.02907; houqb/CoordAttention
  ``coordatt.py``), reduction 32, m = max(8, C // 32) channels in the middle:
    z_h = mean_W x (B, H, C), z_w = mean_H x (B, W, C);
    f = h_swish(BN(W1 [z_h; z_w] + b1))  (one 1x1 conv C -> m and one BN over the H + W
    positions), split back into f_h, f_w;
    a_h = sigmoid(W_h f_h + b_h), a_w = sigmoid(W_w f_w + b_w) (1x1 convs m -> C);
    y = x * a_h[:, :, None, :] * a_w[:, None, :, :];  h_swish(t) = t * relu6(t + 3) / 6.
* ``EfficientLocalAttention`` (Xu & Wan 2024, arXiv 2403.01123; no official code; the
  de-facto definition is the PyTorch listing that third-party copies reproduce):
    z_h = mean_W x (B, H, C), z_w = mean_H x (B, W, C);
    a_h = sigmoid(GN(Conv1d(z_h))), a_w = sigmoid(GN(Conv1d(z_w))) -- ONE Conv1d and ONE
    GroupNorm, shared by both directions; y = x * a_h[:, :, None, :] * a_w[:, None, :, :].
  Conv1d: C -> C, kernel k, zero padding k // 2, ``groups`` g, no bias, PyTorch's default
  init U(+-1/sqrt((C/g) k)). GroupNorm: G groups over (C/G channels x length), eps 1e-5,
  per-channel affine (1, 0). ``ELA_VARIANTS`` pins the variant table:
    ELA-T k=5, g=C, G=32;  ELA-B k=7, g=C, G=16;  ELA-S k=5, g=C/8, G=16;  ELA-L k=7, g=C/8, G=16.
  ``'ela_bn'``: ELA-B with BatchNorm in place of GroupNorm -- the ablation of the paper's
  argument that BN in Coordinate Attention's branch generalizes poorly. The shared BN is
  called once per direction, so in training its running statistics are updated twice per
  forward (H first, then W), as the shared ``nn.BatchNorm1d`` of a PyTorch module would be.

BatchNorm inside an attention (CA, ELA-BN) is PyTorch's default, as in the official CA code:
eps 1e-5, momentum 0.1 (flax momentum 0.9). Linear/1x1 kernels and biases use PyTorch's
default init U(+-1/sqrt(fan_in)). Modules holding a norm name it ``norm`` so parameter labels
(``normjax.optim.labels``) see it as a norm (no weight decay).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from normjax.models import check_choice
from normjax.norms import make_norm

Array = jax.Array

# torch.nn.Linear / Conv default: kaiming_uniform(a=sqrt(5)) = U(+-1/sqrt(fan_in)) for weights
TORCH_KERNEL_INIT = nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
# PyTorch BatchNorm defaults as flax-convention keyword arguments
TORCH_BATCH_NORM = {"momentum": 0.9, "epsilon": 1e-5}

# name -> (kernel size k, conv groups as a function of C, GroupNorm groups G)
ELA_VARIANTS = {
  "ela_t": (5, lambda c: c, 32),
  "ela_b": (7, lambda c: c, 16),
  "ela_s": (5, lambda c: c // 8, 16),
  "ela_l": (7, lambda c: c // 8, 16),
}
ATTENTIONS = ("none", "se", "ca", *ELA_VARIANTS, "ela_bn")


def torch_linear(in_features: int, out_features: int, *, dtype, rngs: nnx.Rngs) -> nnx.Linear:
  """``nnx.Linear`` with torch.nn.Linear's init: weight and bias U(+-1/sqrt(in_features))."""
  bound = 1.0 / in_features**0.5
  return nnx.Linear(
    in_features,
    out_features,
    kernel_init=TORCH_KERNEL_INIT,
    bias_init=lambda key, shape, dtype=jnp.float32: jax.random.uniform(
      key, shape, dtype, -bound, bound
    ),
    dtype=dtype,
    rngs=rngs,
  )


def strip_means(x: Array) -> tuple[Array, Array]:
  """(mean over W, mean over H) of x (B, H, W, C): shapes (B, H, C) and (B, W, C)."""
  return jnp.mean(x, axis=2), jnp.mean(x, axis=1)


def h_swish(x: Array) -> Array:
  """Hard swish of the CA code: x * relu6(x + 3) / 6."""
  return x * jnp.clip(x + 3.0, 0.0, 6.0) / 6.0


class SqueezeExcitation(nnx.Module):
  """SE gate: sigmoid(W2 relu(W1 mean_{H,W} x)) per channel; see the module docstring."""

  def __init__(self, channels: int, *, reduction: int = 16, dtype=None, rngs: nnx.Rngs):
    hidden = max(1, channels // reduction)
    self.reduce = torch_linear(channels, hidden, dtype=dtype, rngs=rngs)
    self.expand = torch_linear(hidden, channels, dtype=dtype, rngs=rngs)

  def __call__(self, x: Array) -> Array:
    s = jnp.mean(x, axis=(1, 2))
    gate = jax.nn.sigmoid(self.expand(jax.nn.relu(self.reduce(s))))
    return x * gate[:, None, None, :].astype(x.dtype)


class CoordinateAttention(nnx.Module):
  """Coordinate Attention (houqb/CoordAttention ``CoordAtt``); see the module docstring."""

  def __init__(self, channels: int, *, reduction: int = 32, dtype=None, rngs: nnx.Rngs):
    hidden = max(8, channels // reduction)
    self.reduce = torch_linear(channels, hidden, dtype=dtype, rngs=rngs)
    self.norm = make_norm("batchnorm", hidden, rngs=rngs, **TORCH_BATCH_NORM)
    self.gate_h = torch_linear(hidden, channels, dtype=dtype, rngs=rngs)
    self.gate_w = torch_linear(hidden, channels, dtype=dtype, rngs=rngs)

  def __call__(self, x: Array) -> Array:
    z_h, z_w = strip_means(x)
    height = z_h.shape[1]
    f = h_swish(self.norm(self.reduce(jnp.concatenate([z_h, z_w], axis=1))))
    a_h = jax.nn.sigmoid(self.gate_h(f[:, :height]))
    a_w = jax.nn.sigmoid(self.gate_w(f[:, height:]))
    return x * a_h[:, :, None, :].astype(x.dtype) * a_w[:, None, :, :].astype(x.dtype)


class EfficientLocalAttention(nnx.Module):
  """ELA: one shared grouped Conv1d + one shared norm for the H and W strips.

  Args:
    channels: C. kernel_size: k. conv_groups: g (C = depthwise). norm_groups: G of the
      GroupNorm. norm: 'groupnorm' (ELA) or 'batchnorm' (the 'ela_bn' ablation, PyTorch
      defaults). dtype, rngs.
  """

  def __init__(
    self,
    channels: int,
    *,
    kernel_size: int,
    conv_groups: int,
    norm_groups: int = 16,
    norm: str = "groupnorm",
    dtype=None,
    rngs: nnx.Rngs,
  ):
    check_choice("ela norm", norm, ("groupnorm", "batchnorm"))
    if conv_groups < 1 or channels % conv_groups:
      raise ValueError(
        f"model argument attention (ELA): conv groups {conv_groups} must divide the "
        f"{channels} channels of the block"
      )
    if norm == "groupnorm" and channels % norm_groups:
      raise ValueError(
        f"model argument attention (ELA): GroupNorm groups {norm_groups} must divide the "
        f"{channels} channels of the block; use a width divisible by {norm_groups}"
      )
    pad = kernel_size // 2
    self.conv = nnx.Conv(
      channels,
      channels,
      (kernel_size,),
      padding=((pad, pad),),
      feature_group_count=conv_groups,
      use_bias=False,
      kernel_init=TORCH_KERNEL_INIT,
      dtype=dtype,
      rngs=rngs,
    )
    if norm == "groupnorm":
      self.norm = make_norm("groupnorm", channels, rngs=rngs, num_groups=norm_groups, epsilon=1e-5)
    else:
      self.norm = make_norm("batchnorm", channels, rngs=rngs, **TORCH_BATCH_NORM)

  def __call__(self, x: Array) -> Array:
    z_h, z_w = strip_means(x)
    a_h = jax.nn.sigmoid(self.norm(self.conv(z_h)))
    a_w = jax.nn.sigmoid(self.norm(self.conv(z_w)))
    return x * a_h[:, :, None, :].astype(x.dtype) * a_w[:, None, :, :].astype(x.dtype)


def make_attention(name: str, channels: int, *, dtype=None, rngs: nnx.Rngs) -> nnx.Module | None:
  """The attention module ``name`` (one of ``ATTENTIONS``) for ``channels``; None for 'none'."""
  check_choice("attention", name, ATTENTIONS)
  if name == "none":
    return None
  if name == "se":
    return SqueezeExcitation(channels, dtype=dtype, rngs=rngs)
  if name == "ca":
    return CoordinateAttention(channels, dtype=dtype, rngs=rngs)
  kernel_size, groups, norm_groups = ELA_VARIANTS["ela_b" if name == "ela_bn" else name]
  return EfficientLocalAttention(
    channels,
    kernel_size=kernel_size,
    conv_groups=groups(channels),
    norm_groups=norm_groups,
    norm="batchnorm" if name == "ela_bn" else "groupnorm",
    dtype=dtype,
    rngs=rngs,
  )
