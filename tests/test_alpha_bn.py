"""alpha-BN: the two endpoints, the mix, training = BatchNorm; corruptions; the eval command."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from normjax import train
from normjax.data import corruptions
from normjax.norms import alpha_bn, make_norm
from normjax.tools import alpha_bn_eval
from tests import conv_norm_utils as u
from tests import trainer_utils as tu

EPS = 1e-5


def _pair(channels=6, **kwargs):
  """An AlphaBatchNorm and a BatchNorm with the same random scale/bias and running stats."""
  rng = np.random.default_rng(5)
  values = {
    "scale": rng.standard_normal(channels),
    "bias": rng.standard_normal(channels),
    "mean": rng.standard_normal(channels),
    "var": 0.5 + rng.random(channels),
  }
  pair = []
  for name, kw in (("alpha_bn", kwargs), ("batchnorm", {})):
    norm = make_norm(name, channels, momentum=0.9, rngs=nnx.Rngs(0), **kw)
    for key, value in values.items():
      getattr(norm, key)[...] = jnp.asarray(value, jnp.float32)
    pair.append(norm)
  return pair, {k: np.asarray(v, np.float64) for k, v in values.items()}


def test_alpha_zero_and_one_are_the_two_endpoints():
  x = jnp.asarray(u.data((5, 3, 3, 6)))
  (source, bn), _ = _pair(alpha=0.0)
  bn.eval()
  source.eval()
  np.testing.assert_allclose(source(x), bn(x), rtol=1e-6, atol=1e-6)  # alpha = 0: source stats
  (batch_only, bn), _ = _pair(alpha=1.0, unbiased=False)
  batch_only.eval()
  # alpha = 1 with the population variance: BatchNorm's training-mode forward
  np.testing.assert_allclose(batch_only(x), bn(x), rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("alpha,unbiased", [(0.1, True), (0.3, False), (1.0, True)])
def test_mix_matches_reference(alpha, unbiased):
  x = u.data((4, 3, 3, 6))
  (norm, _), v = _pair(alpha=alpha, unbiased=unbiased)
  norm.eval()
  rows = u.f64(x).reshape(-1, 6)
  batch_var = rows.var(0, ddof=1 if unbiased else 0)
  mean = (1 - alpha) * v["mean"] + alpha * rows.mean(0)
  var = (1 - alpha) * v["var"] + alpha * batch_var
  expected = (u.f64(x) - mean) / np.sqrt(var + EPS) * v["scale"] + v["bias"]
  np.testing.assert_allclose(norm(jnp.asarray(x)), expected, rtol=2e-5, atol=2e-5)
  np.testing.assert_array_equal(norm.mean[...], v["mean"].astype(np.float32))  # no update


def test_training_mode_is_batchnorm_and_masks_count_only_real_rows():
  x = jnp.asarray(u.data((4, 3, 6)))
  (norm, bn), v = _pair()
  np.testing.assert_array_equal(norm(x), bn(x))
  np.testing.assert_array_equal(norm.var[...], bn.var[...])
  assert set(nnx.state(norm)) == set(nnx.state(bn))  # a BatchNorm checkpoint loads as is
  mask = np.ones((4, 3), bool)
  mask[3] = False
  y, _ = alpha_bn.alpha_batch_norm(
    x, {}, {"mean": jnp.zeros(6), "var": jnp.ones(6)}, alpha=1.0, mask=jnp.asarray(mask)
  )
  rows = u.f64(x)[mask]
  expected = (u.f64(x) - rows.mean(0)) / np.sqrt(rows.var(0, ddof=1) + EPS)
  np.testing.assert_allclose(np.asarray(y)[mask], expected[mask], rtol=2e-5, atol=2e-5)
  with pytest.raises(ValueError, match="alpha=1.5"):
    make_norm("alpha_bn", 6, alpha=1.5, rngs=nnx.Rngs(0))


def test_corruptions_are_deterministic_and_do_what_they_say():
  images = u.data((3, 8, 8, 1))
  noisy = [corruptions.gaussian_noise(images, np.random.default_rng([0, 1])) for _ in range(2)]
  np.testing.assert_array_equal(*noisy)
  assert 0.4 < float(np.std(noisy[0] - images)) < 0.6
  low = corruptions.low_contrast(images)
  np.testing.assert_allclose(low.std((1, 2, 3)), 0.3 * images.std((1, 2, 3)), rtol=1e-5)
  np.testing.assert_allclose(low.mean((1, 2, 3)), images.mean((1, 2, 3)), rtol=1e-5, atol=1e-6)
  constant = np.full((1, 8, 8, 1), 2.5, np.float32)
  np.testing.assert_allclose(corruptions.gaussian_blur(constant), constant, rtol=1e-6)
  impulse = np.zeros((1, 8, 8, 1), np.float32)
  impulse[0, 4, 4, 0] = 1.0
  blurred = corruptions.gaussian_blur(impulse)[0, :, :, 0]
  k = np.exp(-0.5 * np.arange(-2, 3) ** 2)
  k /= k.sum()
  np.testing.assert_allclose(blurred[2:7, 2:7], np.outer(k, k), rtol=1e-5, atol=1e-7)


def test_severity_three_is_the_default_and_the_levels_are_ordered():
  images = u.data((4, 8, 8, 1))
  for name in ("clean", "noise", "contrast", "blur"):
    default = corruptions.CORRUPTIONS[name](images, np.random.default_rng([0, 2]))
    level3 = corruptions.corruption(name, 3)(images, np.random.default_rng([0, 2]))
    np.testing.assert_array_equal(level3, default)

  def change(name, level):
    out = corruptions.corruption(name, level)(images, np.random.default_rng([0, 2]))
    return float(np.std(out - images))

  for name in ("noise", "contrast", "blur"):
    changes = [change(name, level) for level in range(1, 6)]
    assert all(a < b for a, b in zip(changes, changes[1:])), (name, changes)
  # sigma 1.5 widens the kernel to radius 3: an impulse spreads 3 pixels each way
  impulse = np.zeros((1, 9, 9, 1), np.float32)
  impulse[0, 4, 4, 0] = 1.0
  spread = corruptions.corruption("blur", 5)(impulse)[0, 4, :, 0]
  assert spread[1] > 0 and spread[0] == 0
  with pytest.raises(ValueError, match="severity=6"):
    corruptions.corruption("noise", 6)
  with pytest.raises(ValueError, match="known"):
    corruptions.corruption("snow", 1)


def test_eval_command_on_a_trained_batchnorm_resnet(tmp_path, capsys):
  config = tu.apply(tu.load_config("resnet_batchnorm"), tu.overrides("resnet", 3))
  final = train.train_and_evaluate(config, str(tmp_path))
  results = alpha_bn_eval.evaluate(str(tmp_path), batch_size=64)
  assert set(results) == {"clean", "noise", "contrast", "blur"}
  # source statistics on clean data are exactly the trainer's own evaluation
  assert results["clean"][0.0] == pytest.approx(final["eval_accuracy"], abs=1e-9)
  for by_alpha in results.values():
    assert set(by_alpha) == {0.0, 1.0, 0.1} and all(0 <= a <= 1 for a in by_alpha.values())
  table = alpha_bn_eval.format_table(results)
  assert "| contrast |" in table and "alpha-BN (a=0.1)" in table
  mild = alpha_bn_eval.evaluate(str(tmp_path), alphas=(0.0,), batch_size=64, severity=1)
  assert mild["clean"][0.0] == results["clean"][0.0]
  assert mild["contrast"][0.0] != results["contrast"][0.0]
  with pytest.raises(ValueError, match="batch_size=1"):
    alpha_bn_eval.evaluate(str(tmp_path), batch_size=1)
  with pytest.raises(FileNotFoundError, match="no config.json"):
    alpha_bn_eval.evaluate(str(tmp_path / "nothing"))


# ----------------------------------------------------------------------------- gradients
def _grad_case(seed=11, alpha=0.3):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(6, 3, 3, 4)) * rng.uniform(0.5, 2, 4) + rng.normal(size=4)
  g = rng.normal(size=x.shape)  # cotangent dL/dy
  params = {"scale": rng.uniform(0.5, 1.5, 4), "bias": rng.normal(size=4)}
  state = {"mean": rng.normal(size=4), "var": rng.uniform(0.5, 2, 4)}
  return x, g, params, state, alpha


def _jax_input_grad(x, g, params, state, alpha, **kwargs):
  with jax.enable_x64(True):
    p, s = jax.tree.map(jnp.asarray, params), jax.tree.map(jnp.asarray, state)
    loss = lambda v: jnp.sum(alpha_bn.alpha_batch_norm(v, p, s, alpha=alpha, **kwargs)[0] * g)
    return np.asarray(jax.grad(loss)(jnp.asarray(x)))


def test_eval_gradient_treats_the_test_statistics_as_constants():
  x, g, params, state, alpha = _grad_case()
  rows = x.reshape(-1, 4)
  n = rows.shape[0]
  mean = (1 - alpha) * state["mean"] + alpha * rows.mean(0)
  var = (1 - alpha) * state["var"] + alpha * rows.var(0, ddof=1)
  s = np.sqrt(var + EPS)
  official = g * params["scale"] / s  # the official mixed statistics are constants
  np.testing.assert_allclose(
    _jax_input_grad(x, g, params, state, alpha), official, rtol=1e-12, atol=1e-12
  )
  # gradient_through_statistics: d/dx of the mix, in closed form, per channel
  gr, xc = g.reshape(-1, 4), rows - mean
  through = (gr - alpha * gr.mean(0)) / s - (gr * xc).sum(0) / s**3 * alpha * (
    rows - rows.mean(0)
  ) / (n - 1)
  through = (through * params["scale"]).reshape(x.shape)
  got = _jax_input_grad(x, g, params, state, alpha, gradient_through_statistics=True)
  np.testing.assert_allclose(got, through, rtol=1e-11, atol=1e-12)
  assert np.abs(got - official).max() > 1e-2  # the option is a different gradient


def test_eval_gradient_against_torch_official_alpha_bn():
  torch = pytest.importorskip("torch")
  x, g, params, state, alpha = _grad_case(seed=12, alpha=0.4)
  # AlphaBatchNorm re-typed from its formula: an affine-free auxiliary BatchNorm2d with
  # momentum 1 (in training mode) holds the test batch's statistics in its buffers; the layer
  # normalizes with the (1 - alpha, alpha) mix of the source and those buffers
  aux = torch.nn.BatchNorm2d(4, affine=False, momentum=1.0).double().train()
  xt = torch.tensor(x).permute(0, 3, 1, 2).requires_grad_(True)
  aux(xt)
  mixed_mean = (1 - alpha) * torch.tensor(state["mean"]) + alpha * aux.running_mean
  mixed_var = (1 - alpha) * torch.tensor(state["var"]) + alpha * aux.running_var
  y = torch.nn.functional.batch_norm(
    xt,
    mixed_mean,
    mixed_var,
    torch.tensor(params["scale"]),
    torch.tensor(params["bias"]),
    False,
    0.0,
    EPS,
  )
  y.backward(torch.tensor(g).permute(0, 3, 1, 2))
  expected = xt.grad.permute(0, 2, 3, 1).numpy()
  np.testing.assert_allclose(
    _jax_input_grad(x, g, params, state, alpha), expected, rtol=1e-12, atol=1e-12
  )
  with jax.enable_x64(True):
    y_jax, _ = alpha_bn.alpha_batch_norm(
      jnp.asarray(x),
      jax.tree.map(jnp.asarray, params),
      jax.tree.map(jnp.asarray, state),
      alpha=alpha,
    )
  np.testing.assert_allclose(y_jax, y.permute(0, 2, 3, 1).detach().numpy(), rtol=1e-12, atol=1e-12)
  module = make_norm("alpha_bn", 4, rngs=nnx.Rngs(0))
  assert module.gradient_through_statistics is False  # the official behaviour is the default
