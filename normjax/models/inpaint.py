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

norm_B is ``norm`` and norm_L is ``decoder_norm``; the defaults are the paper's choice:
RN-B with the hole mask (``region_norm_b``) in the encoder, RN-L (``region_norm_l``,
``threshold``) in the residual blocks and the decoder. Any registered norm can take either
place (e.g. 'batchnorm', 'instancenorm', 'none' as baselines); ``region_norm_b`` layers get
the hole mask (nearest-resized to their resolution), the others none. Scaled down from the
official 256-px model: 3x3 (not 7x7) outer convs, one downsampling (not two), width 32 (not
64), 2 middle blocks (not 8); convs have biases, as the official ones without spectral norm,
and PyTorch's default init (kernel and bias U(+-1/sqrt(fan_in))).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from normjax.models import compute_dtype, conv_kernel_init, register
from normjax.norms import NORMS, make_norm
from normjax.norms.region_norm import RegionNormB

# torch.nn.Conv2d's default: kaiming_uniform(a=sqrt(5)) = U(+-1/sqrt(fan_in)), drawn as a matrix
TORCH_CONV_INIT = conv_kernel_init(
  nnx.initializers.variance_scaling(1 / 3, "fan_in", "uniform"), "fan_in"
)


def torch_bias_init(fan_in: int):
  bound = fan_in**-0.5
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


def reflect_pad(x: jax.Array, pad: int) -> jax.Array:
  return jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="reflect")


def apply_norm(norm, x: jax.Array, hole: jax.Array) -> jax.Array:
  """``norm(x)``, with the hole mask for a mask-conditioned RN-B layer."""
  return norm(x, mask=hole) if isinstance(norm, RegionNormB) else norm(x)


def pixel_shuffle(x: jax.Array, factor: int) -> jax.Array:
  """(B, H, W, C * r^2) -> (B, H r, W r, C), channel order of torch's ``PixelShuffle``."""
  b, h, w, c = x.shape
  out = c // factor**2
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

  def __call__(self, x, hole):
    y = jax.nn.relu(apply_norm(self.norm1, self.conv1(reflect_pad(x, self.dilation)), hole))
    return x + apply_norm(self.norm2, self.conv2(reflect_pad(y, 1)), hole)


@register("inpaint")
class InpaintNet(nnx.Module):
  """Inpainting generator; ``model((image, hole))`` -> reconstruction in [0, 1].

  Args:
    in_channels: image channels (from the data). width: encoder width (doubled after the
      downsampling). num_blocks: middle residual blocks. dilation: their first conv's.
    norm: the encoder norm (default 'region_norm_b'); decoder_norm: the norm of the residual
      blocks and the decoder (default 'region_norm_l'); any registered names.
    norm_kwargs / decoder_norm_kwargs: their keyword arguments. threshold: RN-L's (used
      when decoder_norm is 'region_norm_l').
    dtype: activation dtype. rngs: parameter RNGs.
  """

  task = "inpainting"

  def __init__(
    self,
    *,
    in_channels: int = 1,
    width: int = 32,
    num_blocks: int = 2,
    dilation: int = 2,
    norm: str = "region_norm_b",
    norm_kwargs: dict | None = None,
    decoder_norm: str = "region_norm_l",
    decoder_norm_kwargs: dict | None = None,
    threshold: float = 0.8,
    dtype: str = "float32",
    rngs: nnx.Rngs,
  ):
    if width < 1 or num_blocks < 0 or dilation < 1:
      raise ValueError(
        f"model arguments width={width}, num_blocks={num_blocks}, dilation="
        f"{dilation}: need width >= 1, num_blocks >= 0, dilation >= 1"
      )
    NORMS.get(norm), NORMS.get(decoder_norm)
    decoder_norm_kwargs = dict(decoder_norm_kwargs or {})
    if decoder_norm == "region_norm_l":
      decoder_norm_kwargs.setdefault("threshold", threshold)
    make_b = functools.partial(make_norm, norm, rngs=rngs, **dict(norm_kwargs or {}))
    make_l = functools.partial(make_norm, decoder_norm, rngs=rngs, **decoder_norm_kwargs)
    self.dtype = compute_dtype(dtype)

    def conv(in_features, out_features, kernel_size, **kwargs):
      return nnx.Conv(
        in_features,
        out_features,
        kernel_size,
        **{
          "padding": "VALID",
          "dtype": self.dtype,
          "rngs": rngs,
          "kernel_init": TORCH_CONV_INIT,
          "bias_init": torch_bias_init(in_features * kernel_size[0] * kernel_size[1]),
          **kwargs,
        },
      )

    self.encoder_conv1 = conv(in_channels, width, (3, 3))
    self.encoder_norm1 = make_b(width)
    self.encoder_conv2 = conv(width, 2 * width, (4, 4), strides=(2, 2), padding=((1, 1), (1, 1)))
    self.encoder_norm2 = make_b(2 * width)
    self.blocks = nnx.List(
      [
        ResidualBlock(2 * width, dilation=dilation, make_norm_l=make_l, conv=conv)
        for _ in range(num_blocks)
      ]
    )
    self.decoder_conv = conv(2 * width, 4 * width, (3, 3), padding=((1, 1), (1, 1)))
    self.decoder_norm = make_l(width)
    self.output_conv = conv(width, in_channels, (3, 3))

  def __call__(self, inputs) -> jax.Array:
    """``(image, hole)``, both (B, H, W, C) / (B, H, W, 1), hole 1 = missing -> (B, H, W, C)."""
    image, hole = inputs
    hole = hole.astype(self.dtype)
    x = image.astype(self.dtype) * (1 - hole) + hole
    x = jax.nn.relu(apply_norm(self.encoder_norm1, self.encoder_conv1(reflect_pad(x, 1)), hole))
    x = jax.nn.relu(apply_norm(self.encoder_norm2, self.encoder_conv2(x), hole))
    for block in self.blocks:
      x = block(x, hole)
    x = jax.nn.relu(apply_norm(self.decoder_norm, pixel_shuffle(self.decoder_conv(x), 2), hole))
    x = self.output_conv(reflect_pad(x, 1))
    return ((jnp.tanh(x) + 1) / 2).astype(jnp.float32)


__all__ = ["reflect_pad", "apply_norm", "pixel_shuffle", "ResidualBlock", "InpaintNet"]
