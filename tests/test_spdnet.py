"""SPDNet and GBW-RBN: the batch norm against a NumPy re-statement of the official forward (steps
1-7), the power-map gradient (theta = 0.5 exposes the official bug), frozen BiMap, running
statistics through a checkpoint, the Riemannian optimizers, the dataset, bad inputs."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
import scipy.linalg
from flax import nnx

from normjax import optim
from normjax.data import spd_digits
from normjax.models import make_model, spdnet
from normjax.optim import labels
from tests import trainer_utils as tu


def spd(rng, n=4, cond=10.0):
  q, _ = np.linalg.qr(rng.normal(size=(n, n)))
  return (q * np.geomspace(0.5, 0.5 * cond, n)) @ q.T


def msqrt(a):
  return np.real(scipy.linalg.sqrtm(a))


def mpow(a, p):
  lam, u = np.linalg.eigh(a)
  return (u * lam**p) @ u.T


def lyap(x, v):
  return scipy.linalg.solve_continuous_lyapunov(x, v)


def reference_bw_bn(xs, bias, metric, theta, shift, eps=1e-5):
  """The official BatchNormSPD training forward in NumPy (jjscc/GBWBN nn.py / functional.py)."""
  n = xs.shape[-1]
  eye = np.eye(n)
  xs = np.stack([mpow(x, theta) for x in xs])
  b = mpow(bias, theta)
  mis, ms = np.linalg.inv(msqrt(metric)), msqrt(metric)
  xs = np.stack([mis @ x @ mis for x in xs])
  b = mis @ b @ mis
  g0 = xs.mean(0)
  g0s, g0is = msqrt(g0), np.linalg.inv(msqrt(g0))
  h = np.mean([msqrt(g0s @ x @ g0s) for x in xs], 0)
  g = g0is @ h @ h @ g0is
  var = np.mean([np.trace(x) + n - 2 * np.trace(msqrt(x)) for x in xs]) / theta**2
  gs, gis = msqrt(g), np.linalg.inv(msqrt(g))
  lam_g, p_g = np.linalg.eigh(g)
  lam_b, p_b = np.linalg.eigh(b)
  out = []
  for x in xs:
    c1 = gs @ msqrt(gs @ x @ gs) @ gis
    v = c1 + c1.T - 2 * g  # Log_G(X)
    vt = p_g @ (np.sqrt(2 / (lam_g[:, None] + lam_g[None, :])) * (p_g.T @ v @ p_g)) @ p_g.T
    c = vt + eye + vt @ vt / 4  # pal1 (returns Exp_I)
    w = shift / np.sqrt(var + eps) * (2 * msqrt(c) - 2 * eye)
    c = w + eye + w @ w / 4  # scale1
    u = 2 * msqrt(c) - 2 * eye
    u = p_b @ (np.sqrt((lam_b[:, None] + lam_b[None, :]) / 2) * (p_b.T @ u @ p_b)) @ p_b.T
    ly = lyap(b, u)
    y = b + u + ly @ b @ ly  # ExpG at the bias
    y = ms @ y @ ms
    out.append(mpow(y, 1 / theta))
  return np.stack(out), g, var


@pytest.mark.parametrize("theta,with_metric", [(1.0, False), (0.5, True), (1.0, True)])
def test_bw_batch_norm_matches_the_official_forward(theta, with_metric):
  rng = np.random.default_rng(0)
  xs = np.stack([spd(rng) for _ in range(6)])
  bias, metric = spd(rng, cond=3.0), spd(rng, cond=2.0) if with_metric else np.eye(4)
  with jax.enable_x64(True):
    bn = spdnet.SPDBatchNorm(
      4, metric="gbw" if with_metric else "bw", theta=theta, momentum=0.9, dtype=jnp.float64
    )
    bn.spd_bias.value = jnp.asarray(bias)
    bn.shift.value = jnp.asarray(0.7)
    if with_metric:
      bn.spd_metric.value = jnp.asarray(metric)
    y = np.asarray(bn(jnp.asarray(xs)))
    rm, rv = np.asarray(bn.running_mean[...]), float(bn.running_var[...])
  y_ref, g, var = reference_bw_bn(xs, bias, metric, theta, 0.7)
  np.testing.assert_allclose(y, y_ref, rtol=1e-8, atol=1e-9)
  # running statistics: BW geodesic from I with weight 0.1 on the new mean
  c1 = msqrt(g)  # (I g)^1/2
  np.testing.assert_allclose(rm, 0.81 * np.eye(4) + 0.01 * g + 0.09 * (c1 + c1.T), rtol=1e-9)
  assert rv == pytest.approx(0.9 + 0.1 * var, rel=1e-10)


def test_eval_uses_the_running_statistics_and_round_trips_a_checkpoint(tmp_path):
  rng = np.random.default_rng(1)
  xs = jnp.asarray(np.stack([spd(rng) for _ in range(5)]), jnp.float32)
  bn = spdnet.SPDBatchNorm(4, metric="gbw", momentum=0.0)
  y_train = bn(xs)
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(tmp_path / "bn", nnx.to_pure_dict(nnx.state(bn)))
  checkpointer.wait_until_finished()
  fresh = spdnet.SPDBatchNorm(4, metric="gbw", momentum=0.0)
  graph, state = nnx.split(fresh)
  nnx.replace_by_pure_dict(state, checkpointer.restore(tmp_path / "bn", nnx.to_pure_dict(state)))
  fresh = nnx.merge(graph, state)
  np.testing.assert_array_equal(
    np.asarray(fresh.running_mean[...]), np.asarray(bn.running_mean[...])
  )
  fresh.eval()
  np.testing.assert_allclose(np.asarray(fresh(xs)), np.asarray(y_train), rtol=1e-3, atol=1e-4)


def _power_grad(official):
  rng = np.random.default_rng(2)
  xs = np.stack([spd(rng) for _ in range(4)])
  r = rng.normal(size=xs.shape)
  with jax.enable_x64(True):

    def loss(bias):
      model = spdnet.SPDBatchNorm(
        4, metric="bw", theta=0.5, official_power_grad=official, dtype=jnp.float64
      )
      model.spd_bias.value = bias
      return jnp.sum(jnp.asarray(r) * model(jnp.asarray(xs)))

    bias = jnp.asarray(spd(rng, cond=3.0))
    grad = np.asarray(jax.grad(loss)(bias))
    h, numeric = 1e-6, np.zeros((4, 4))
    for i in range(4):
      for j in range(i, 4):
        e = np.zeros((4, 4))
        e[i, j] = e[j, i] = h
        d = (float(loss(bias + e)) - float(loss(bias - e))) / (2 * h)
        numeric[i, j] = numeric[j, i] = d if i == j else d / 2
  return 0.5 * (grad + grad.T), numeric


def test_power_map_gradient_is_correct_and_the_official_one_is_not():
  ours, numeric = _power_grad(official=False)
  np.testing.assert_allclose(ours, numeric, rtol=1e-5, atol=1e-7)
  official, numeric = _power_grad(official=True)
  assert np.abs(official - numeric).max() > 1e-2 * np.abs(numeric).max()


def test_airm_batch_norm_is_brooks():
  rng = np.random.default_rng(3)
  xs = np.stack([spd(rng) for _ in range(5)])
  bias = spd(rng, cond=2.0)
  with jax.enable_x64(True):
    bn = spdnet.SPDBatchNorm(4, metric="airm", dtype=jnp.float64)
    bn.spd_bias.value = jnp.asarray(bias)
    y = np.asarray(bn(jnp.asarray(xs)))
  g0 = xs.mean(0)
  g0s, g0is = msqrt(g0), np.linalg.inv(msqrt(g0))
  t = np.mean([np.real(scipy.linalg.logm(g0is @ x @ g0is)) for x in xs], 0)
  g = g0s @ scipy.linalg.expm(t) @ g0s
  gis, bs = np.linalg.inv(msqrt(g)), msqrt(bias)
  np.testing.assert_allclose(y, np.stack([bs @ gis @ x @ gis @ bs for x in xs]), rtol=1e-8)


def test_frozen_bimap_gets_no_gradient_and_stiefel_init():
  x = jnp.asarray(np.stack([spd(np.random.default_rng(i), n=5) for i in range(3)]), jnp.float32)
  for frozen in (False, True):
    model = make_model("spdnet", rngs=nnx.Rngs(0), num_classes=3, image_size=5, freeze_bimap=frozen)
    w = model.bimap.stiefel_kernel[...]
    np.testing.assert_allclose(np.asarray(w.T @ w), np.eye(5), atol=1e-5)
    model.eval()  # running statistics: no state written inside the gradient
    graph, params, rest = nnx.split(model, nnx.Param, ...)
    grads = jax.grad(lambda p: jnp.sum(nnx.merge(graph, p, rest)(x)))(params)
    norm = float(jnp.abs(grads["bimap"]["stiefel_kernel"][...]).max())
    assert (norm == 0.0) == frozen


def test_spd_optimizer_official_and_bw_updates():
  rng = np.random.default_rng(4)
  w, g = spd(rng, cond=5.0), rng.normal(size=(4, 4))
  lr = 0.01
  with jax.enable_x64(True):
    for gradient in ("official", "bw"):
      tx = optim.spd_rsgd(lr, gradient=gradient)
      params = {"spd_bias": jnp.asarray(w)}
      updates, _ = tx.update({"spd_bias": jnp.asarray(g)}, tx.init(params), params)
      new = np.asarray(optax.apply_updates(params, updates)["spd_bias"])
      gs = 0.5 * (g + g.T)
      xi = w @ gs @ w if gradient == "official" else 2 * (gs @ w + w @ gs)
      v = -lr * xi
      ly = lyap(w, v)
      np.testing.assert_allclose(new, w + v + ly @ w @ ly, rtol=1e-10)
      assert np.linalg.eigvalsh(new).min() > 0
  # the BW Riemannian gradient represents the Euclidean one in the BW metric
  vs = rng.normal(size=(4, 4))
  vs = vs + vs.T
  xi = 2 * (gs @ w + w @ gs)
  assert 0.5 * np.trace(lyap(w, xi) @ vs) == pytest.approx(np.trace(gs @ vs), rel=1e-9)


def test_stiefel_optimizer_retracts_onto_the_manifold():
  rng = np.random.default_rng(5)
  w, _ = np.linalg.qr(rng.normal(size=(6, 3)))
  g = rng.normal(size=(6, 3))
  tx = optim.stiefel_rsgd(0.1)
  params = {"stiefel_kernel": jnp.asarray(w, jnp.float32)}
  updates, _ = tx.update({"stiefel_kernel": jnp.asarray(g, jnp.float32)}, tx.init(params), params)
  new = np.asarray(optax.apply_updates(params, updates)["stiefel_kernel"])
  np.testing.assert_allclose(new.T @ new, np.eye(3), atol=1e-5)
  xi = g - w @ (0.5 * (w.T @ g + g.T @ w))
  q, r = np.linalg.qr(w - 0.1 * xi)
  np.testing.assert_allclose(new, q * np.sign(np.diag(r)), atol=1e-5)
  zero, _ = tx.update({"stiefel_kernel": jnp.zeros((6, 3))}, tx.init(params), params)
  np.testing.assert_allclose(np.asarray(zero["stiefel_kernel"]), 0, atol=1e-6)
  with pytest.raises(ValueError, match="weight_decay=0.1"):
    optim.stiefel_rsgd(0.1, weight_decay=0.1)
  with pytest.raises(ValueError, match="gradient='airm'"):
    optim.spd_rsgd(0.1, gradient="airm")


def test_manifold_groups_label_the_spdnet_parameters():
  model = make_model("spdnet", rngs=nnx.Rngs(0), num_classes=3, image_size=5, spd_norm="gbw")
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  flat = jax.tree_util.tree_flatten_with_path(labels.manifold_groups(params))[0]
  got = {"/".join(str(k.key) for k in path): v for path, v in flat}
  assert got == {
    "bimap/stiefel_kernel": "stiefel",
    "norm/spd_bias": "spd",
    "norm/spd_metric": "spd",
    "norm/shift": "euclidean",
    "head/kernel": "euclidean",
    "head/bias": "euclidean",
  }


def test_descriptors_are_spd_and_the_ridge_sets_the_conditioning():
  images = np.random.default_rng(6).integers(0, 17, size=(20, 8, 8))
  well = spd_digits.covariance_descriptors(images, 1e-3)
  ill = spd_digits.covariance_descriptors(images, 1e-7, 3.0)
  feats = spd_digits.pixel_features(images)
  np.testing.assert_allclose(well[3], np.cov(feats[3].T, bias=True) + 1e-3 * np.eye(5), atol=1e-12)
  assert np.linalg.eigvalsh(ill).min() > 0
  cond = lambda c: np.linalg.cond(c).max()
  assert cond(ill) > cond(well) ** 2  # the spectrum is cubed
  lam, u = np.linalg.eigh(well - 1e-3 * np.eye(5))
  spectrum = lam**3 / lam.mean(-1, keepdims=True) ** 2
  stretched = (u * spectrum[:, None, :]) @ np.swapaxes(u, -1, -2)
  np.testing.assert_allclose(ill, stretched + 1e-7 * np.eye(5), rtol=1e-6, atol=1e-12)
  with pytest.raises(ValueError, match="config key data.regularization=0"):
    spd_digits.load_spd_digits({"regularization": 0}, None)


def test_non_spd_input_and_bad_arguments_are_refused():
  model = make_model("spdnet", rngs=nnx.Rngs(0), num_classes=3, image_size=2)
  with pytest.raises(ValueError, match="spdnet input: not positive definite"):
    model(jnp.asarray([[[1.0, 0.0], [0.0, -2.0]]]))
  with pytest.raises(ValueError, match="model argument spd_norm='lie'"):
    make_model("spdnet", rngs=nnx.Rngs(0), num_classes=3, image_size=2, spd_norm="lie")
  with pytest.raises(ValueError, match="model argument theta=0"):
    make_model("spdnet", rngs=nnx.Rngs(0), num_classes=3, image_size=2, theta=0)
  with pytest.raises(ValueError, match="model argument hidden=4"):
    make_model("spdnet", rngs=nnx.Rngs(0), num_classes=3, image_size=2, hidden=4)


def test_the_config_trains_with_the_trainer_step():
  config, initial, final, metrics = tu.train_steps("spdnet_gbwbn", steps=3, batch_size=8)
  assert all(np.isfinite(m["loss"]) for m in metrics)
  w = np.asarray(final["params"]["bimap"]["stiefel_kernel"])
  assert not np.allclose(w, np.asarray(initial["params"]["bimap"]["stiefel_kernel"]))
  np.testing.assert_allclose(w.T @ w, np.eye(5), atol=1e-5)
  bias = np.asarray(final["params"]["norm"]["spd_bias"])
  assert np.linalg.eigvalsh(bias).min() > 0 and np.allclose(bias, bias.T, atol=1e-6)
