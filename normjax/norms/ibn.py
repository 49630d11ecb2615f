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

The IBN-a and IBN-b ResNets are ``normjax.models.resnet.ResNet(ibn='a' | 'b')``.
"""
from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from normjax.norms import register
from normjax.norms.basic import RunningAverageView, _check_positive, batch_norm, instance_norm


def ibn_split(num_features: int, ratio: float = 0.5) -> int:
  """Channels that go to InstanceNorm: int(num_features * ratio), as the official code."""
  if not 0.0 < ratio < 1.0:
    raise ValueError(f"ibn ratio={ratio!r}: must be in (0, 1) (the InstanceNorm fraction)")
  half = int(num_features * ratio)
  if not 0 < half < num_features:
    raise ValueError(f"ibn ratio={ratio} on num_features={num_features} gives {half} "
                     f"InstanceNorm channels; both parts need at least one channel")
  return half


def ibn(x, params, state, *, train, mask=None, ratio=0.5, momentum=0.9, epsilon=1e-5,
        instance_epsilon=1e-5):
  """IBN forward. ``params`` = {'instance': {scale, bias}, 'batch': {scale, bias}};
  ``state`` = {'mean', 'var'} of the BatchNorm part. Returns (y, new_state)."""
  half = ibn_split(x.shape[-1], ratio)
  y_in, _ = instance_norm(x[..., :half], params.get("instance", {}), mask=mask,
                          epsilon=instance_epsilon)
  y_bn, state = batch_norm(x[..., half:], params.get("batch", {}), state, train=train,
                           mask=mask, momentum=momentum, epsilon=epsilon)
  return jnp.concatenate([y_in, y_bn], axis=-1), state


@register("ibn")
class IBN(RunningAverageView, nnx.Module):
  """IBN module; see ``ibn``. Variables: ``instance_scale``/``instance_bias`` (half,),
  ``batch_scale``/``batch_bias`` and running ``mean``/``var`` (C - half,). There is no single
  ``scale``, so ``NormAct(zero_init_scale=True)`` leaves it as is (IBN-Net puts IBN only on a
  block's first norm, never on the zero-initialised last one)."""
  uses_batch_statistics = True

  def __init__(self, num_features: int, *, ratio: float = 0.5, momentum: float = 0.9,
               epsilon: float = 1e-5, instance_epsilon: float = 1e-5,
               use_running_average: bool = False, rngs: nnx.Rngs | None = None):
    del rngs
    _check_positive("epsilon", epsilon)
    _check_positive("instance_epsilon", instance_epsilon)
    if not 0.0 <= momentum <= 1.0:
      raise ValueError(f"ibn momentum={momentum!r}: must be in [0, 1] (weight on the old "
                       f"running value; PyTorch's momentum=0.1 is 0.9 here)")
    half = ibn_split(num_features, ratio)
    self.num_features, self.ratio, self.half = num_features, ratio, half
    self.momentum, self.epsilon, self.instance_epsilon = momentum, epsilon, instance_epsilon
    self.use_running_average = use_running_average
    self.instance_scale = nnx.Param(jnp.ones((half,), jnp.float32))
    self.instance_bias = nnx.Param(jnp.zeros((half,), jnp.float32))
    rest = num_features - half
    self.batch_scale = nnx.Param(jnp.ones((rest,), jnp.float32))
    self.batch_bias = nnx.Param(jnp.zeros((rest,), jnp.float32))
    self.mean = nnx.BatchStat(jnp.zeros((rest,), jnp.float32))
    self.var = nnx.BatchStat(jnp.ones((rest,), jnp.float32))

  def __call__(self, x, mask=None):
    if x.shape[-1] != self.num_features:
      raise ValueError(f"IBN built for num_features={self.num_features} got input with "
                       f"{x.shape[-1]} channels (shape {x.shape}); channels go last")
    train = not self.use_running_average
    params = {"instance": {"scale": self.instance_scale[...], "bias": self.instance_bias[...]},
              "batch": {"scale": self.batch_scale[...], "bias": self.batch_bias[...]}}
    y, state = ibn(x, params, {"mean": self.mean[...], "var": self.var[...]}, train=train,
                   mask=mask, ratio=self.ratio, momentum=self.momentum, epsilon=self.epsilon,
                   instance_epsilon=self.instance_epsilon)
    if train:
      self.mean[...], self.var[...] = state["mean"], state["var"]
    return y


__all__ = ["ibn_split", "ibn", "IBN"]
