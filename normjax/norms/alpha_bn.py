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

``AlphaBatchNorm`` has BatchNorm's variables (``scale``, ``bias``, ``mean``, ``var``) and trains
exactly as ``normjax.norms.basic.BatchNorm``; only evaluation (``use_running_average=True``)
mixes. So a model built with ``norm='alpha_bn'`` restores a ``norm='batchnorm'`` checkpoint
as is (``python -m normjax.alpha_bn_eval``).
"""
from __future__ import annotations

import jax.numpy as jnp

from normjax.norms import register
from normjax.norms.basic import BatchNorm, batch_norm, moments, normalize


def alpha_batch_norm(x, params, state, *, train=False, mask=None, alpha=0.1, momentum=0.99,
                     epsilon=1e-5, unbiased=True):
  """alpha-BN; ``state`` = {'mean', 'var'} (source). Returns (y, state).

  ``train=True`` is ``batch_norm`` (with ``momentum``); evaluation mixes as the module doc says.
  """
  if train:
    return batch_norm(x, params, state, train=True, mask=mask, momentum=momentum,
                      epsilon=epsilon)
  if not 0.0 <= alpha <= 1.0:
    raise ValueError(f"alpha_bn alpha={alpha!r}: must be in [0, 1] (weight of the test "
                     f"batch's statistics; 0 = source statistics, 1 = test batch only)")
  mean, var = moments(x, tuple(range(x.ndim - 1)), mask)
  mean, var = mean.reshape(-1), var.reshape(-1)
  if unbiased:  # Bessel's correction over the positions that entered the statistics
    count = (x.size // x.shape[-1] if mask is None else
             jnp.sum(jnp.broadcast_to(jnp.asarray(mask, bool), x.shape[:-1]), dtype=var.dtype))
    var = var * count / jnp.maximum(count - 1, 1)
  mixed_mean = (1 - alpha) * state["mean"] + alpha * mean
  mixed_var = (1 - alpha) * state["var"] + alpha * var
  return normalize(x, mixed_mean, mixed_var, params, epsilon), state


@register("alpha_bn")
class AlphaBatchNorm(BatchNorm):
  """BatchNorm whose evaluation mixes in the test batch's statistics with weight ``alpha``.

  Args as ``BatchNorm`` plus ``alpha`` (0.1) and ``unbiased`` (True). Training mode is
  BatchNorm's; ``model.eval()`` switches to ``alpha_batch_norm``.
  """

  def __init__(self, num_features: int, *, alpha: float = 0.1, unbiased: bool = True,
               **kwargs):
    if not 0.0 <= alpha <= 1.0:
      raise ValueError(f"alpha_bn alpha={alpha!r}: must be in [0, 1] (weight of the test "
                       f"batch's statistics; 0 = source statistics, 1 = test batch only)")
    super().__init__(num_features, **kwargs)
    self.alpha, self.unbiased = alpha, unbiased

  def __call__(self, x, mask=None):
    if not self.use_running_average:
      return super().__call__(x, mask)
    self._check_features(x)
    state = {"mean": self.mean[...], "var": self.var[...]}
    return alpha_batch_norm(x, self.params(), state, alpha=self.alpha, mask=mask,
                            epsilon=self.epsilon, unbiased=self.unbiased)[0]


__all__ = ["alpha_batch_norm", "AlphaBatchNorm"]
