"""Normalizer-free ResNet: activation gains, analytic beta, signal propagation at init."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from normjax.models import make_model, nf_resnet
from normjax.models.ws_conv import ScaledWSConv


def test_activation_gains_give_unit_variance():
  z = np.random.default_rng(0).standard_normal(2_000_000).astype(np.float32)
  for name in nf_resnet.ACTIVATION_GAINS:
    var = float(np.var(np.asarray(nf_resnet.scaled_activation(name)(jnp.asarray(z)), np.float64)))
    assert abs(var - 1.0) < 0.01, (name, var)


def test_expected_std_bookkeeping():
  a2 = 0.2**2
  stds = nf_resnet.expected_stds((2, 3), 0.2)
  expected = [[1.0, np.sqrt(1 + a2)], [np.sqrt(1 + 2 * a2), np.sqrt(1 + a2), np.sqrt(1 + 2 * a2)]]
  for got, want in zip(stds, expected):
    np.testing.assert_allclose(got, want, rtol=1e-12)


def _model(**kwargs):
  args = dict(num_classes=10, in_channels=3, stage_sizes=(2, 2, 2), width=16, rngs=nnx.Rngs(0))
  return make_model("nf_resnet", **{**args, **kwargs})


@pytest.mark.parametrize("skip_gain_init", [1.0, 0.0])
def test_activation_variance_stays_near_one_through_depth_at_init(skip_gain_init):
  """Var(h) follows the analytic 1 + k alpha^2 (reset at each transition), never drifting."""
  model = _model(skip_gain_init=skip_gain_init)
  images = jax.random.normal(jax.random.key(1), (16, 12, 12, 3))
  features = jax.jit(model.features)
  variances = [float(jnp.var(h)) for h in features(images)]
  assert len(variances) == 1 + 6
  assert 0.8 < variances[0] < 1.25  # stem: a Scaled WS conv of unit-variance input
  stds = [s for stage in nf_resnet.expected_stds((2, 2, 2), 0.2) for s in stage]
  for index, var in enumerate(variances[1:]):
    if skip_gain_init:  # the output of block i is the input of block i + 1
      analytic = stds[index + 1] ** 2 if index + 1 < len(stds) else stds[-1] ** 2 + 0.04
    else:
      analytic = 1.0
    assert 0.65 < var / analytic < 1.25, (index, var, analytic)
  assert max(variances) < 1.25 and min(variances) > 0.6


def test_no_normalization_layers_only_scaled_ws_convs():
  model = nnx.eval_shape(lambda: _model(stage_sizes=(1, 1), block="bottleneck"))
  assert not jax.tree.leaves(nnx.state(model, nnx.BatchStat))
  convs = [m for _, m in nnx.iter_graph(model) if isinstance(m, ScaledWSConv)]
  assert len(convs) == 1 + 2 * 3 + 2  # stem, 3 per bottleneck block, 2 projections
  assert not [m for _, m in nnx.iter_graph(model) if isinstance(m, nnx.Conv)]
  with pytest.raises(ValueError, match="no normalization layers"):
    _model(norm="batchnorm")
  with pytest.raises(ValueError, match="activation='swish'"):
    _model(activation="swish")


def test_examples_are_independent_of_the_batch():
  """Batch size 1 and 2 work and give the same per-example outputs (no batch statistics)."""
  model = _model(stage_sizes=(1, 1), skip_gain_init=1.0)
  images = jax.random.normal(jax.random.key(2), (2, 8, 8, 3))
  forward = jax.jit(lambda x: model(x))
  both = forward(images)
  np.testing.assert_allclose(forward(images[1:]), both[1:], rtol=1e-5, atol=1e-5)
  assert both.shape == (2, 10)
