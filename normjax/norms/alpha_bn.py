"""Test-time alpha-BN: mix source running statistics with the test batch's (You, Li, Zhao 2021).

"Test-time Batch Statistics Calibration for Covariate Shift" (arXiv 2110.04065). At test
time BatchNorm normalizes with a convex mix of the source (running) statistics and the
current test batch's, then applies the source scale/bias; nothing is trained:

  mean = (1 - alpha) * running_mean + alpha * batch_mean
  var  = (1 - alpha) * running_var  + alpha * batch_var
  y    = (x - mean) / sqrt(var + eps) * scale + bias

alpha = 0: plain BatchNorm evaluation (source statistics); alpha = 1: pure test-batch
statistics. Convention of the common implementation (mariodoebler/test-time-adaptation
``classification/methods/bn.py`` ``AlphaBatchNorm``, from bethgelab/robustness): alpha is the
TEST-BATCH weight, default 0.1 (90 % source), and batch_var is the UNBIASED batch variance
(PyTorch's BatchNorm with momentum 1 as auxiliary layer); ``unbiased=False`` gives the
population variance, with which alpha = 1 is exactly BatchNorm's training-mode forward. The
paper's own alpha convention and default are not verified against its text.

Gradients: in the official code the test-batch statistics are the auxiliary BatchNorm's
running buffers, which PyTorch updates without autograd, so the mixed mean and variance are
constants and dL/dx = dL/dy * scale / sqrt(var + eps) exactly. That is the default here
(``stop_gradient`` on the batch statistics). ``gradient_through_statistics=True`` keeps the
earlier normjax behaviour, differentiating through the batch mean and variance as BatchNorm's
training forward does (input gradients then differ from the official ones by O(alpha)); the
forward value is the same either way. Only methods that differentiate through the evaluation
forward (test-time entropy minimisation and the like) see the difference.

``AlphaBatchNorm`` has BatchNorm's variables (``scale``, ``bias``, ``mean``, ``var``) and trains
exactly as ``normjax.norms.basic.BatchNorm``; only evaluation (``use_running_average=True``)
mixes. So a model built with ``norm='alpha_bn'`` restores a ``norm='batchnorm'`` checkpoint
as is (``python -m normjax.alpha_bn_eval``). Its evaluation is not an affine map of ``x`` (it
depends on the test batch), so it has no ``eval_affine`` and ``surgery/folding.py`` refuses
it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from normjax.norms import register
from normjax.norms.base import batch_axes, check_fraction, moments, normalize
from normjax.norms.basic import BATCH_NORM_MOMENTUM, BatchNorm, batch_norm

ALPHA_MEANING = "weight of the test batch's statistics; 0 = source statistics, 1 = test batch only"


def alpha_batch_norm(
  x,
  params,
  state,
  *,
  train=False,
  mask=None,
  alpha=0.1,
  momentum=BATCH_NORM_MOMENTUM,
  epsilon=1e-5,
  unbiased=True,
  gradient_through_statistics=False,
):
  """alpha-BN; ``state`` = {'mean', 'var'} (source). Returns (y, state).

  ``train=True`` is ``batch_norm`` (with ``momentum``); evaluation mixes as the module doc says,
  with the test-batch statistics held constant unless ``gradient_through_statistics``.
  """
  if train:
    return batch_norm(x, params, state, train=True, mask=mask, momentum=momentum, epsilon=epsilon)
  check_fraction("alpha", alpha, "alpha_bn", ALPHA_MEANING)
  mean, var = moments(x, batch_axes(x), mask)
  mean, var = mean.reshape(-1), var.reshape(-1)
  if unbiased:  # Bessel's correction over the positions that entered the statistics
    count = (
      x.size // x.shape[-1]
      if mask is None
      else jnp.sum(jnp.broadcast_to(jnp.asarray(mask, bool), x.shape[:-1]), dtype=var.dtype)
    )
    var = var * count / jnp.maximum(count - 1, 1)
  if not gradient_through_statistics:  # official: buffers updated outside autograd
    mean, var = jax.lax.stop_gradient(mean), jax.lax.stop_gradient(var)
  mixed_mean = (1 - alpha) * state["mean"] + alpha * mean
  mixed_var = (1 - alpha) * state["var"] + alpha * var
  return normalize(x, mixed_mean, mixed_var, params, epsilon), state


@register("alpha_bn")
class AlphaBatchNorm(BatchNorm):
  """BatchNorm whose evaluation mixes in the test batch's statistics with weight ``alpha``.

  Args as ``BatchNorm`` plus ``alpha`` (0.1), ``unbiased`` (True) and
  ``gradient_through_statistics`` (False: the official constant statistics). Training mode is
  BatchNorm's; ``model.eval()`` switches to ``alpha_batch_norm``.
  """

  function = staticmethod(alpha_batch_norm)
  eval_affine = None  # the test batch enters the evaluation: not foldable

  def __init__(
    self,
    num_features: int,
    *,
    alpha: float = 0.1,
    unbiased: bool = True,
    gradient_through_statistics: bool = False,
    **kwargs,
  ):
    check_fraction("alpha", alpha, "alpha_bn", ALPHA_MEANING)
    super().__init__(num_features, **kwargs)
    self.alpha, self.unbiased = alpha, unbiased
    self.gradient_through_statistics = gradient_through_statistics

  def function_kwargs(self) -> dict:
    return {
      **super().function_kwargs(),
      "alpha": self.alpha,
      "unbiased": self.unbiased,
      "gradient_through_statistics": self.gradient_through_statistics,
    }


__all__ = ["alpha_batch_norm", "AlphaBatchNorm"]
