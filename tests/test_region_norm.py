"""Region Normalization (RN-B, RN-L) against a float64 port of the official procedure; the
inpainting model, data and task."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from normjax import data as nj_data
from normjax.data import masked_digits
from normjax.models import make_model
from normjax.norms import basic, make_norm
from normjax.tasks import inpainting
from tests import conv_norm_utils as u

EPS = 1e-5
RN_B_PARAMS = ["foreground_scale", "foreground_bias", "background_scale", "background_bias"]


def ref_region_norm(x, mask, eps=EPS):
  """geekyutao/RN ``RN_binarylabel``: per region, fill the outside with the region mean, batch
  norm (no affine, batch statistics), times sqrt(S_R / (B H W)); the two regions summed."""
  x = u.f64(x)
  total = np.prod(x.shape[:-1])
  out = np.zeros_like(x)
  for m in (mask.astype(np.float64), 1.0 - mask.astype(np.float64)):
    m = m[..., None]
    region = x * m
    count = m.sum() or 1.0
    mu = region.sum((0, 1, 2)) / count
    filled = region + (1 - m) * mu
    bn = (filled - filled.mean((0, 1, 2))) / np.sqrt(filled.var((0, 1, 2)) + eps)
    out += bn * np.sqrt(count / total)
  return out


def ref_rn_b(x, mask, norm):
  p = {n: u.f64(getattr(norm, n)[...]) for n in RN_B_PARAMS}
  rn, m = ref_region_norm(x, mask), mask[..., None].astype(np.float64)
  return (
    rn * m * (1 + p["foreground_scale"])
    + p["foreground_bias"]
    + rn * (1 - m) * (1 + p["background_scale"])
    + p["background_bias"]
  )


def _rn_b(channels):
  return u.randomize(make_norm("region_norm_b", channels, rngs=nnx.Rngs(0)), RN_B_PARAMS)


def _random_mask(shape, rng=u.RNG):
  return rng.random(shape) < 0.3


def test_rn_b_matches_official_procedure():
  x = u.data((3, 6, 6, 5))
  mask = _random_mask((3, 6, 6))
  norm = _rn_b(5)
  np.testing.assert_allclose(
    norm(jnp.asarray(x), mask=jnp.asarray(mask)), ref_rn_b(x, mask, norm), rtol=2e-5, atol=2e-5
  )
  # (B, H, W, 1) float masks and (B, H, W) bool masks are the same thing
  np.testing.assert_allclose(
    norm(jnp.asarray(x), mask=jnp.asarray(mask[..., None], jnp.float32)),
    ref_rn_b(x, mask, norm),
    rtol=2e-5,
    atol=2e-5,
  )


def test_mask_is_nearest_resized_to_the_feature_size():
  x = u.data((2, 4, 4, 3))
  mask = _random_mask((2, 8, 8))
  norm = _rn_b(3)
  np.testing.assert_allclose(
    norm(jnp.asarray(x), mask=jnp.asarray(mask)),
    ref_rn_b(x, mask[:, ::2, ::2], norm),
    rtol=2e-5,
    atol=2e-5,
  )


def test_all_ones_or_all_zeros_mask_is_plain_batch_normalization():
  x = u.data((4, 5, 5, 6))
  mean, var = u.batch_stats(x)
  expected = (u.f64(x) - mean) / np.sqrt(var + EPS)
  bn, _ = basic.batch_norm(
    jnp.asarray(x), {}, {"mean": jnp.zeros(6), "var": jnp.ones(6)}, train=True, epsilon=EPS
  )
  norm = make_norm("region_norm_b", 6, rngs=nnx.Rngs(0))  # identity affine at init
  for fill in (True, False):
    y = norm(jnp.asarray(x), mask=jnp.full((4, 5, 5), fill))
    np.testing.assert_allclose(y, expected, rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(y, bn, rtol=1e-5, atol=1e-5)


def test_eval_is_train_and_mask_gets_no_gradient():
  x = jnp.asarray(u.data((2, 4, 4, 3)))
  mask = jnp.asarray(_random_mask((2, 4, 4)), jnp.float32)

  class Net(nnx.Module):
    def __init__(self):
      self.norm = _rn_b(3)

  net = Net()
  y_train = net.norm(x, mask=mask)
  net.eval()
  np.testing.assert_array_equal(net.norm(x, mask=mask), y_train)  # batch statistics always
  grad = jax.grad(lambda m: jnp.sum(net.norm(x, mask=m) ** 2))(mask)
  np.testing.assert_array_equal(grad, 0.0)
  with pytest.raises(ValueError, match="needs the region mask"):
    net.norm(x)


def _attention_ref(x, norm):
  x = u.f64(x)
  pooled = np.concatenate([x.mean(-1, keepdims=True), x.max(-1, keepdims=True)], -1)
  logits = u.conv2d_ref(pooled, u.f64(norm.attention_kernel[...]), padding=(3, 3))
  return 1 / (1 + np.exp(-logits))


def test_rn_l_matches_reference():
  x = u.data((3, 6, 6, 4), offset=0.0, rng=np.random.default_rng(7))  # fixed: see below
  norm = make_norm("region_norm_l", 4, threshold=0.5, rngs=nnx.Rngs(3))
  s = _attention_ref(x, norm)
  assert np.abs(s - 0.5).min() > 1e-4, "pick data away from the threshold"
  mask = s[..., 0] >= 0.5
  assert 0 < mask.mean() < 1, "both regions should be non-empty"
  gamma = u.conv2d_ref(s, u.f64(norm.gamma_kernel[...]), padding=(3, 3)) + u.f64(
    norm.gamma_bias[...]
  )
  beta = u.conv2d_ref(s, u.f64(norm.beta_kernel[...]), padding=(3, 3)) + u.f64(norm.beta_bias[...])
  expected = ref_region_norm(x, mask) * (1 + gamma) + beta
  np.testing.assert_allclose(norm(jnp.asarray(x)), expected, rtol=5e-5, atol=5e-5)
  assert norm.attention_kernel.shape == (7, 7, 2, 1) and norm.threshold == 0.5
  assert make_norm("region_norm_l", 4, rngs=nnx.Rngs(0)).threshold == 0.8
  # the attention convs learn through the pixel-wise affine (the mask itself is detached)
  graphdef, params = nnx.split(norm)
  grads = jax.grad(lambda p: jnp.sum(nnx.merge(graphdef, p)(jnp.asarray(x)) ** 2))(params)
  assert float(jnp.abs(grads["attention_kernel"][...]).max()) > 0


def test_region_norms_sharded_equal_unsharded():
  x = u.per_shard_differs((16, 4, 4, 3))
  u.assert_sharded_equals_unsharded(_rn_b(3), x, _random_mask((16, 4, 4)))
  u.assert_sharded_equals_unsharded(
    make_norm("region_norm_l", 3, threshold=0.5, rngs=nnx.Rngs(0)), x
  )


# ----------------------------------------------------------------------------- inpainting
def test_masked_digits_holes_are_deterministic_squares():
  u_rows = np.array([[0.0, 0.0], [0.999, 0.999], [0.5, 0.2]])
  masks = masked_digits.hole_masks(8, 4, u_rows)[..., 0]
  assert masks.sum((1, 2)).tolist() == [16, 16, 16]
  assert masks[0, :4, :4].all() and masks[1, 4:, 4:].all() and masks[2, 2:6, 1:5].all()
  cfg = ml_collections.ConfigDict({"name": "masked_digits", "hole_size": 3})
  info = nj_data.get_info(cfg)
  assert (info.task, info.image_shape, info.num_eval) == ("inpainting", (8, 8, 1), 359)
  first = [next(iter(nj_data.eval_iterator(cfg, global_batch_size=16)))["hole"] for _ in range(2)]
  np.testing.assert_array_equal(*first)  # the same eval holes every time
  assert (first[0].sum((1, 2, 3)) == 9).all()
  train = next(nj_data.train_iterator(cfg, global_batch_size=16, seed=0))
  assert 0.0 <= train["image"].min() and train["image"].max() <= 1.0
  assert (train["hole"].sum((1, 2, 3)) == 9).all()
  with pytest.raises(ValueError, match="hole_size=9"):
    nj_data.get_info(ml_collections.ConfigDict({"name": "masked_digits", "hole_size": 9}))


def test_inpainting_task_loss_and_psnr():
  rng = np.random.default_rng(1)
  image, out = rng.random((3, 8, 8, 1)), rng.random((3, 8, 8, 1))
  hole = masked_digits.hole_masks(8, 4, rng.random((3, 2)))
  loss, psnr = inpainting.per_example(
    jnp.asarray(out), {"image": jnp.asarray(image), "hole": jnp.asarray(hole)}
  )
  np.testing.assert_allclose(loss, np.abs(out - image).mean((1, 2, 3)), rtol=1e-5)
  mse = ((out * hole + image * (1 - hole) - image) ** 2).mean((1, 2, 3))
  np.testing.assert_allclose(psnr, 10 * np.log10(1 / mse), rtol=1e-5)


def test_inpaint_model_never_sees_the_missing_pixels():
  model = make_model(
    "inpaint", in_channels=1, width=8, num_blocks=1, threshold=0.5, rngs=nnx.Rngs(0)
  )
  rng = np.random.default_rng(2)
  image = jnp.asarray(rng.random((4, 8, 8, 1)), jnp.float32)
  hole = jnp.asarray(masked_digits.hole_masks(8, 4, rng.random((4, 2))))
  forward = jax.jit(lambda inputs: nnx.merge(*nnx.split(model))(inputs))
  y = forward((image, hole))
  assert y.shape == (4, 8, 8, 1) and float(y.min()) >= 0 and float(y.max()) <= 1
  np.testing.assert_array_equal(forward((image + 5 * hole, hole)), y)
  kinds = {type(m).__name__ for _, m in nnx.iter_graph(model)}
  assert {"RegionNormB", "RegionNormL"} <= kinds
