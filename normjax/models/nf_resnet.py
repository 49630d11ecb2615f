"""Normalizer-free ResNet (Brock, De, Smith, ICLR 2021) in Flax NNX: no norm layers at all.

"Characterizing signal propagation to close the performance gap in unnormalized ResNets"
(arXiv 2101.08692); layout and defaults of google-deepmind/deepmind-research
``nfnets/nf_resnet.py`` (``NF_ResNet``, ``NFResBlock``) and ``nfnets/base.py``. FedWon
(Zhuang & Lyu, ICLR 2024) trains this family -- every conv a Scaled WS conv, no normalization,
adaptive gradient clipping -- down to batch size 1 (``configs/resnet_nf.py``).

Pre-activation residual blocks, h_{i+1} = h_i + alpha * s_i * f_i(h_i / beta_i):

* every conv is a ``ScaledWSConv`` (zero-mean, unit-norm filters per output channel, gain,
  bias), so a conv maps zero-mean unit-variance inputs to unit variance;
* the activation is multiplied by its gain gamma (``ACTIVATION_GAINS``: relu x 1.71396, the
  DeepMind "magic constants", Var(gamma * g(z)) = 1 for z ~ N(0, 1));
* beta_i = expected std of h_i, computed analytically: Var(h_{i+1}) = Var(h_i) + alpha^2,
  reset to 1 + alpha^2 after each stage's first (transition) block, whose shortcut is a
  Scaled WS 1x1 conv of the scaled activation h_i / beta_i (so it restarts at variance 1);
* alpha = 0.2; s_i is a learnable scalar ``skip_gain`` initialised to ``skip_gain_init``
  (DeepMind default 0: SkipInit, every block starts as the identity; 1 gives the paper's
  signal-propagation analysis at init);
* stem: a Scaled WS conv (3x3 for 'cifar'; 7x7 stride 2 + 3x3 max pool for 'imagenet'),
  no activation (the first block's pre-activation follows); head: activation, global
  average pool, linear.

Deviation: DeepMind initialises the classifier to zeros; here it is LeCun-normal
(``zero_init_head=True`` restores theirs). The trainer's ``config.adaptive_grad_clip``
clips every leaf, and unit-wise clipping of an all-zero matrix (max(|W|, 1e-3) * lambda)
would freeze it; NFNets exclude the classifier from AGC for this reason. No stochastic
depth, dropout or squeeze-excite (their options), basic blocks added for small inputs.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from normjax.models import check_choice, compute_dtype, register
from normjax.models.pooling import max_pool
from normjax.models.resnet import check_stages
from normjax.models.ws_conv import ScaledWSConv

# Var(gamma * g(z)) = 1 for z ~ N(0, 1): nfnets/base.py ``nonlinearities`` (measured there).
ACTIVATION_GAINS = {
  "relu": 1.7139588594436646,
  "gelu": 1.7015043497085571,
  "silu": 1.7881293296813965,
  "tanh": 1.5939117670059204,
  "elu": 1.2716004848480225,
  "identity": 1.0,
}
_ACTIVATIONS = {
  "relu": jax.nn.relu,
  "gelu": jax.nn.gelu,
  "silu": jax.nn.silu,
  "tanh": jnp.tanh,
  "elu": jax.nn.elu,
  "identity": lambda x: x,
}
STEMS = ("cifar", "imagenet")


def scaled_activation(name: str):
  """gamma * g(x) for the activation ``name`` (a key of ``ACTIVATION_GAINS``)."""
  check_choice("activation", name, ACTIVATION_GAINS)
  fn, gain = _ACTIVATIONS[name], ACTIVATION_GAINS[name]
  return lambda x: fn(x) * jnp.asarray(gain, x.dtype)


class NFBlock(nnx.Module):
  """Pre-activation NF residual block: x + alpha * skip_gain * f(act(x) * beta).

  ``bottleneck=False``: f = conv3x3(stride) -> act -> conv3x3 (output width ``features``);
  ``bottleneck=True``: 1x1 -> act -> 3x3(stride) -> act -> 1x1 to ``4 * features``.
  """

  def __init__(
    self,
    in_features: int,
    features: int,
    *,
    strides: int,
    beta: float,
    alpha: float,
    activation,
    bottleneck: bool,
    skip_gain_init: float,
    conv,
  ):
    self.expansion = 4 if bottleneck else 1
    out_features = features * self.expansion
    self.beta, self.alpha, self.activation = beta, alpha, activation  # activation: a name
    self.shortcut = (
      conv(in_features, out_features, 1, strides=strides)
      if strides != 1 or in_features != out_features
      else None
    )
    if bottleneck:
      self.convs = nnx.List(
        [
          conv(in_features, features, 1),
          conv(features, features, 3, strides=strides),
          conv(features, out_features, 1),
        ]
      )
    else:
      self.convs = nnx.List(
        [conv(in_features, features, 3, strides=strides), conv(features, features, 3)]
      )
    self.skip_gain = nnx.Param(jnp.asarray(skip_gain_init, jnp.float32))

  def __call__(self, x: jax.Array) -> jax.Array:
    act = scaled_activation(self.activation)
    out = act(x) * jnp.asarray(self.beta, x.dtype)
    shortcut = x if self.shortcut is None else self.shortcut(out)
    for index, conv in enumerate(self.convs):
      out = conv(out if index == 0 else act(out))
    return shortcut + out * (self.skip_gain[...] * self.alpha).astype(out.dtype)


def expected_stds(stage_sizes: Sequence[int], alpha: float) -> list[list[float]]:
  """The analytic std of each block's input: DeepMind's ``expected_std`` bookkeeping."""
  expected, out = 1.0, []
  for num_blocks in stage_sizes:
    stage = []
    for index in range(int(num_blocks)):
      stage.append(expected)
      if index == 0:
        expected = 1.0
      expected = (expected**2 + alpha**2) ** 0.5
    out.append(stage)
  return out


@register("nf_resnet")
class NFResNet(nnx.Module):
  """Normalizer-free ResNet classifier on channels-last images (see the module docstring).

  Args:
    num_classes, in_channels: from the data.
    stage_sizes: blocks per stage; block: 'basic' or 'bottleneck'; width: first-stage
      channels (doubled per stage; bottleneck outputs are 4x).
    stem: 'cifar' or 'imagenet'. activation: a key of ``ACTIVATION_GAINS``.
    alpha: residual branch scale (0.2). skip_gain_init: init of each block's scalar gain (0).
    zero_init_head: DeepMind's zero-initialised classifier (see the deviation note).
    norm: must be 'none' (kept for the models contract); dtype: activation dtype.
  """

  task = "classification"

  def __init__(
    self,
    *,
    num_classes: int,
    in_channels: int = 3,
    stage_sizes: Sequence[int] = (2, 2, 2, 2),
    block: str = "basic",
    width: int = 64,
    stem: str = "cifar",
    activation: str = "relu",
    alpha: float = 0.2,
    skip_gain_init: float = 0.0,
    zero_init_head: bool = False,
    norm: str = "none",
    norm_kwargs: dict | None = None,
    dtype: str = "float32",
    rngs: nnx.Rngs,
  ):
    if norm != "none" or norm_kwargs:
      raise ValueError(
        f"model argument norm={norm!r} (norm_kwargs={norm_kwargs!r}): "
        f"nf_resnet has no normalization layers; use norm='none' or the "
        f"'resnet' model for a normalized network"
      )
    check_choice("block", block, ("basic", "bottleneck"))
    check_choice("stem", stem, STEMS)
    check_stages(stage_sizes, width)
    if alpha < 0:
      raise ValueError(f"model argument alpha={alpha!r}: must be >= 0 (0.2 in the paper)")
    self.dtype = compute_dtype(dtype)
    scaled_activation(activation)  # checks the name
    self.activation = activation
    conv = functools.partial(ScaledWSConv, dtype=self.dtype, rngs=rngs)
    self.stem_max_pool = stem == "imagenet"
    self.stem_conv = conv(
      in_channels, width, 7 if stem == "imagenet" else 3, strides=2 if stem == "imagenet" else 1
    )
    bottleneck = block == "bottleneck"
    blocks, in_features = [], width
    for stage, stds in enumerate(expected_stds(stage_sizes, alpha)):
      features = width * 2**stage
      for index, std in enumerate(stds):
        blocks.append(
          NFBlock(
            in_features,
            features,
            strides=2 if stage > 0 and index == 0 else 1,
            beta=1.0 / std,
            alpha=alpha,
            activation=self.activation,
            bottleneck=bottleneck,
            skip_gain_init=skip_gain_init,
            conv=conv,
          )
        )
        in_features = features * blocks[-1].expansion
    self.blocks = nnx.List(blocks)
    head_init = nnx.initializers.zeros_init() if zero_init_head else nnx.initializers.lecun_normal()
    self.head = nnx.Linear(
      in_features, num_classes, kernel_init=head_init, dtype=self.dtype, rngs=rngs
    )

  def features(self, images: jax.Array) -> list[jax.Array]:
    """The stem output and every block's output (for signal-propagation plots and tests)."""
    x = self.stem_conv(images.astype(self.dtype))
    if self.stem_max_pool:
      x = max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    outputs = [x]
    for block in self.blocks:
      outputs.append(block(outputs[-1]))
    return outputs

  def __call__(self, images: jax.Array) -> jax.Array:
    """float images (B, H, W, C) -> float32 logits (B, num_classes)."""
    x = scaled_activation(self.activation)(self.features(images)[-1])
    return self.head(jnp.mean(x, axis=(1, 2))).astype(jnp.float32)


__all__ = ["ACTIVATION_GAINS", "scaled_activation", "expected_stds", "NFBlock", "NFResNet"]
