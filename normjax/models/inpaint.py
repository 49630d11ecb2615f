"""A small masked-image-reconstruction (inpainting) network for Region Normalization.

A scaled-down generator of geekyutao/RN ``networks.py`` (``G_Net``, Yu et al., AAAI 2020),
for the embedded 8x8 digits with square holes (``data.name='masked_digits'``,
task 'inpainting'). Input: the image and its hole mask (1 = hole); as the official
generator, the model first fills the holes with 1, x = image * (1 - M) + M, so it never sees
the missing pixels.

  encoder: reflect-pad 1, conv3x3 -> norm_B -> ReLU; conv4x4 stride 2 (pad 1) -> norm_B -> ReLU
  middle:  ``num_blocks`` residual blocks x + [reflect-pad d, conv3x3 dilation d -> norm_L ->
           ReLU -> reflect-pad 1, conv3x3 -> norm_L]   (no ReLU after the add)
  decoder: conv3x3 (pad 1) to 4x channels -> pixel shuffle x2 -> norm_L -> ReLU;
           reflect-pad 1, conv3x3 to the image channels; output (tanh(x) + 1) / 2 in [0, 1]

``norm='region_norm'`` (default) is the paper's choice: norm_B = RN-B with the hole mask
(``region_norm_b``), norm_L = RN-L (``region_norm_l``, ``threshold``). Any other registered
norm name puts that norm at every site (e.g. 'batchnorm', 'instancenorm', 'none' as
baselines), called without the mask. Scaled down from the official 256-px model: 3x3 (not
7x7) outer convs, one downsampling (not two), width 32 (not 64), 2 middle blocks (not 8);
convs have biases, as the official ones without spectral norm.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from normjax.models import compute_dtype, register
from normjax.norms import NORMS, make_norm

REGION_NORM = "region_norm"


def reflect_pad(x: jax.Array, pad: int) -> jax.Array:
  return jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="reflect")


def pixel_shuffle(x: jax.Array, factor: int) -> jax.Array:
  """(B, H, W, C * r^2) -> (B, H r, W r, C), channel order of torch's ``PixelShuffle``."""
  b, h, w, c = x.shape
  out = c // factor ** 2
  x = x.reshape(b, h, w, out, factor, factor)
  return x.transpose(0, 1, 4, 2, 5, 3).reshape(b, h * factor, w * factor, out)


class ResidualBlock(nnx.Module):
  """x + norm(conv3x3(relu(norm(conv3x3_dilated(x))))), reflect padding (saRN_ResnetBlock)."""

  def __init__(self, features: int, *, dilation: int, make_norm_l, conv):
    self.dilation = dilation
    self.conv1 = conv(features, features, (3, 3), kernel_dilation=dilation)
    self.norm1 = make_norm_l(features)
    self.conv2 = conv(features, features, (3, 3))
    self.norm2 = make_norm_l(features)

  def __call__(self, x):
    y = jax.nn.relu(self.norm1(self.conv1(reflect_pad(x, self.dilation))))
    return x + self.norm2(self.conv2(reflect_pad(y, 1)))


@register("inpaint")
class InpaintNet(nnx.Module):
  """Inpainting generator; ``model((image, hole))`` -> reconstruction in [0, 1].

  Args:
    in_channels: image channels (from the data). width: encoder width (doubled after the
      downsampling). num_blocks: middle residual blocks. dilation: their first conv's.
    norm: 'region_norm' (RN-B + RN-L) or any registered norm name; norm_kwargs: its
      keyword arguments (for 'region_norm': ``epsilon`` only). threshold: RN-L's.
    dtype: activation dtype. rngs: parameter RNGs.
  """

  task = "inpainting"

  def __init__(self, *, in_channels: int = 1, width: int = 32, num_blocks: int = 2,
               dilation: int = 2, norm: str = REGION_NORM, norm_kwargs: dict | None = None,
               threshold: float = 0.8, dtype: str = "float32", rngs: nnx.Rngs):
    if width < 1 or num_blocks < 0 or dilation < 1:
      raise ValueError(f"model arguments width={width}, num_blocks={num_blocks}, dilation="
                       f"{dilation}: need width >= 1, num_blocks >= 0, dilation >= 1")
    norm_kwargs = dict(norm_kwargs or {})
    self.region = norm == REGION_NORM
    if self.region:
      if set(norm_kwargs) - {"epsilon"}:
        raise ValueError(f"model argument norm_kwargs={norm_kwargs!r}: with norm='region_norm'"
                         f" only 'epsilon' applies (RN-L's threshold is model.threshold)")
      make_b = functools.partial(make_norm, "region_norm_b", rngs=rngs, **norm_kwargs)
      make_l = functools.partial(make_norm, "region_norm_l", rngs=rngs, threshold=threshold,
                                 **norm_kwargs)
    else:
      NORMS.get(norm)
      make_b = make_l = functools.partial(make_norm, norm, rngs=rngs, **norm_kwargs)
    self.dtype = compute_dtype(dtype)
    conv = functools.partial(nnx.Conv, padding="VALID", dtype=self.dtype, rngs=rngs)
    self.encoder_conv1 = conv(in_channels, width, (3, 3))
    self.encoder_norm1 = make_b(width)
    self.encoder_conv2 = conv(width, 2 * width, (4, 4), strides=(2, 2),
                              padding=((1, 1), (1, 1)))
    self.encoder_norm2 = make_b(2 * width)
    self.blocks = nnx.List([ResidualBlock(2 * width, dilation=dilation, make_norm_l=make_l,
                                          conv=conv) for _ in range(num_blocks)])
    self.decoder_conv = conv(2 * width, 4 * width, (3, 3), padding=((1, 1), (1, 1)))
    self.decoder_norm = make_l(width)
    self.output_conv = conv(width, in_channels, (3, 3))

  def _norm_b(self, norm, x, hole):
    return norm(x, mask=hole) if self.region else norm(x)

  def __call__(self, inputs) -> jax.Array:
    """``(image, hole)``, both (B, H, W, C) / (B, H, W, 1), hole 1 = missing -> (B, H, W, C)."""
    image, hole = inputs
    hole = hole.astype(self.dtype)
    x = image.astype(self.dtype) * (1 - hole) + hole
    x = jax.nn.relu(self._norm_b(self.encoder_norm1, self.encoder_conv1(reflect_pad(x, 1)), hole))
    x = jax.nn.relu(self._norm_b(self.encoder_norm2, self.encoder_conv2(x), hole))
    for block in self.blocks:
      x = block(x)
    x = jax.nn.relu(self.decoder_norm(pixel_shuffle(self.decoder_conv(x), 2)))
    x = self.output_conv(reflect_pad(x, 1))
    return ((jnp.tanh(x) + 1) / 2).astype(jnp.float32)


__all__ = ["reflect_pad", "pixel_shuffle", "ResidualBlock", "InpaintNet"]
