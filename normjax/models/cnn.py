"""A small plain CNN: ``depth`` x (3x3 conv -> norm -> ReLU), global average pool, linear head.

The continual-learning model of ``normjax.tools.continual`` (reference/next-methods.md §1:
"small CNN, 3 conv-BN-ReLU, width 32, on 8x8"): convs without bias (a norm follows each),
He (fan-out, normal) init as ``models/resnet.py``, 'SAME' padding; the first conv has stride 1,
the others stride 2 (8x8 -> 8, 4, 2), so the last features see the whole image before the
pool (with stride 1 throughout a 7x7 receptive field is averaged over the image and the
digit's layout is lost).

``model(x, task_ids=None)``: ``task_ids`` (int (N,), the continual-learning task of each
example) reaches every norm with the trait ``needs_task_ids`` (AdaB²N); other norms never see
it. ``norm_inputs(x, task_ids=None)`` returns the input of each norm, in order, for
statistics probes (the running-vs-population gap of ``normjax.tools.continual``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from normjax.models import compute_dtype, register
from normjax.models.resnet import HE_INIT
from normjax.norms import make_norm


class ConvNormAct(nnx.Module):
  def __init__(self, in_features, features, *, strides, norm, norm_kwargs, dtype, rngs):
    self.conv = nnx.Conv(
      in_features,
      features,
      (3, 3),
      strides=(strides, strides),
      padding="SAME",
      use_bias=False,
      kernel_init=HE_INIT,
      dtype=dtype,
      rngs=rngs,
    )
    self.norm = make_norm(norm, features, rngs=rngs, **norm_kwargs)

  def normed(self, h, task_ids):
    if getattr(self.norm, "needs_task_ids", False):
      return self.norm(h, task_ids=task_ids)
    return self.norm(h)

  def __call__(self, x, task_ids=None):
    return jax.nn.relu(self.normed(self.conv(x), task_ids))


@register("cnn")
class CNN(nnx.Module):
  """Plain CNN (see the module docstring)."""

  def __init__(
    self,
    *,
    num_classes: int,
    in_channels: int = 1,
    width: int = 32,
    depth: int = 3,
    norm: str = "batchnorm",
    norm_kwargs: dict | None = None,
    dtype: str = "float32",
    rngs: nnx.Rngs,
  ):
    for name, value in (("width", width), ("depth", depth), ("num_classes", num_classes)):
      if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"model argument {name}={value!r}: must be an integer >= 1")
    self.dtype = compute_dtype(dtype)
    kwargs = dict(norm_kwargs or {})
    self.blocks = nnx.List(
      [
        ConvNormAct(
          in_channels if i == 0 else width,
          width,
          strides=1 if i == 0 else 2,
          norm=norm,
          norm_kwargs=kwargs,
          dtype=self.dtype,
          rngs=rngs,
        )
        for i in range(depth)
      ]
    )
    self.head = nnx.Linear(width, num_classes, dtype=self.dtype, rngs=rngs)

  def __call__(self, x, task_ids=None):
    h = x.astype(self.dtype)
    for block in self.blocks:
      h = block(h, task_ids)
    return self.head(jnp.mean(h, axis=(1, 2))).astype(jnp.float32)

  def norm_inputs(self, x, task_ids=None) -> list:
    """The input of each norm (the conv outputs), in order, as the current mode computes them."""
    h, inputs = x.astype(self.dtype), []
    for block in self.blocks:
      z = block.conv(h)
      inputs.append(z)
      h = jax.nn.relu(block.normed(z, task_ids))
    return inputs
