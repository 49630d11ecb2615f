"""IBN layer: InstanceNorm on the first channels, BatchNorm on the rest (Pan et al., ECCV 2018).

"Two at Once: Enhancing Learning and Generalization Capacities via IBN-Net" (arXiv
1807.09441); XingangPan/IBN-Net ``ibnnet/modules.py`` (``IBN``). Channels-last x (B, ..., C),
half = int(C * ratio), ratio 0.5:

  y[..., :half] = InstanceNorm(x[..., :half])   (per sample and channel over space, its own
                                                 affine; instance statistics in train AND eval)
  y[..., half:] = BatchNorm(x[..., half:])       (batch statistics in training, running in eval)

Official numerics (PyTorch ``InstanceNorm2d(affine=True)`` and ``BatchNorm2d``): eps 1e-5 for
both, BatchNorm momentum 0.1, i.e. ``momentum=0.9`` here (weight on the old running value),
population variance everywhere (PyTorch stores the unbiased running variance; flax and
normjax store the population one). Affine init 1/0 for both halves.

The IBN-a and IBN-b ResNets are ``ResNet(ibn='a' | 'b')`` (``models/resnet.py``).
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from normjax.norms import register
from normjax.norms.base import TORCH_MOMENTUM, StatefulNorm, check_fraction, check_positive
from normjax.norms.basic import batch_norm, instance_norm


def ibn_split(num_features: int, ratio: float = 0.5) -> int:
  """Channels that go to InstanceNorm: int(num_features * ratio), as the official code."""
  if not 0.0 < ratio < 1.0:
    raise ValueError(f"ibn ratio={ratio!r}: must be in (0, 1) (the InstanceNorm fraction)")
  half = int(num_features * ratio)
  if not 0 < half < num_features:
    raise ValueError(
      f"ibn ratio={ratio} on num_features={num_features} gives {half} "
      f"InstanceNorm channels; both parts need at least one channel"
    )
  return half


def ibn(
  x,
  params,
  state,
  *,
  train,
  mask=None,
  ratio=0.5,
  momentum=0.9,
  epsilon=1e-5,
  instance_epsilon=1e-5,
):
  """IBN forward. ``params`` = {'instance': {scale, bias}, 'batch': {scale, bias}};
  ``state`` = {'mean', 'var'} of the BatchNorm part. Returns (y, new_state)."""
  half = ibn_split(x.shape[-1], ratio)
  y_in, _ = instance_norm(
    x[..., :half], params.get("instance", {}), mask=mask, epsilon=instance_epsilon
  )
  y_bn, state = batch_norm(
    x[..., half:],
    params.get("batch", {}),
    state,
    train=train,
    mask=mask,
    momentum=momentum,
    epsilon=epsilon,
  )
  return jnp.concatenate([y_in, y_bn], axis=-1), state


@register("ibn")
class IBN(StatefulNorm):
  """IBN module; see ``ibn``. Variables: ``instance_scale``/``instance_bias`` (half,),
  ``batch_scale``/``batch_bias`` and running ``mean``/``var`` (C - half,). There is no single
  ``scale``, so ``NormAct(zero_init_scale=True)`` leaves it as is (IBN-Net puts IBN only on a
  block's first norm, never on the zero-initialised last one).

  ``momentum`` defaults to 0.9, the official PyTorch 0.1. Inside ``ResNet(ibn=...)`` the IBN
  layers take the model's BatchNorm momentum instead (``models/resnet.py``), so one model
  never mixes two momenta.
  """

  uses_batch_statistics = True
  state_variables = ("mean", "var")
  function = staticmethod(ibn)

  def __init__(
    self,
    num_features: int,
    *,
    ratio: float = 0.5,
    momentum: float = 0.9,
    epsilon: float = 1e-5,
    instance_epsilon: float = 1e-5,
    use_running_average: bool = False,
    rngs: nnx.Rngs | None = None,
  ):
    del rngs
    check_positive("epsilon", epsilon)
    check_positive("instance_epsilon", instance_epsilon)
    check_fraction("momentum", momentum, "ibn", TORCH_MOMENTUM)
    half = ibn_split(num_features, ratio)
    super().__init__(num_features)
    self.ratio, self.half = ratio, half
    self.momentum, self.epsilon, self.instance_epsilon = momentum, epsilon, instance_epsilon
    self.use_running_average = use_running_average
    self.instance_scale = nnx.Param(jnp.ones((half,), jnp.float32))
    self.instance_bias = nnx.Param(jnp.zeros((half,), jnp.float32))
    rest = num_features - half
    self.batch_scale = nnx.Param(jnp.ones((rest,), jnp.float32))
    self.batch_bias = nnx.Param(jnp.zeros((rest,), jnp.float32))
    self.mean = nnx.BatchStat(jnp.zeros((rest,), jnp.float32))
    self.var = nnx.BatchStat(jnp.ones((rest,), jnp.float32))

  def params(self) -> dict:
    return {
      "instance": {"scale": self.instance_scale[...], "bias": self.instance_bias[...]},
      "batch": {"scale": self.batch_scale[...], "bias": self.batch_bias[...]},
    }

  def function_kwargs(self) -> dict:
    return {
      "ratio": self.ratio,
      "momentum": self.momentum,
      "epsilon": self.epsilon,
      "instance_epsilon": self.instance_epsilon,
    }


__all__ = ["ibn_split", "ibn", "IBN"]
