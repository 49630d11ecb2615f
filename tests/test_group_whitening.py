"""Group whitening: exact group ZCA against NumPy ``eigh`` in float64, BatchNorm at one channel per
group, gradients, GDWCT's penalties and block colouring against a NumPy re-statement of the
official ``WCT`` / ``Get.coloring`` / ``reg``, running statistics, bad inputs."""

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from normjax.norms import group_whitening as gw
from normjax.norms import make_norm
from normjax.state import pop_aux_loss

C, G, EPS = 8, 2, 1e-5


def data(shape=(6, 3, 3, C), seed=0):
  rng = np.random.default_rng(seed)
  mix = rng.normal(size=(C, C))  # correlated channels
  return rng.normal(size=shape) @ mix + rng.normal(size=C)


def reference_zca(x, groups, eps=EPS):
  """Per group: Sigma = cov (population) + eps I, W = U diag(lam^-1/2) U^T (NumPy eigh)."""
  rows = x.reshape(-1, x.shape[-1])
  n = x.shape[-1] // groups
  out = np.empty_like(rows)
  for g in range(groups):
    xg = rows[:, g * n : (g + 1) * n]
    xc = xg - xg.mean(0)
    lam, u = np.linalg.eigh(xc.T @ xc / len(xc) + eps * np.eye(n))
    out[:, g * n : (g + 1) * n] = xc @ (u * lam**-0.5) @ u.T
  return out.reshape(x.shape)


def test_group_zca_matches_numpy_eigh_and_whitens_each_group():
  x = data()
  with jax.enable_x64(True):
    norm = make_norm("group_whitening", C, rngs=nnx.Rngs(0), num_groups=G)
    y = np.asarray(norm(jnp.asarray(x)))
  np.testing.assert_allclose(y, reference_zca(x, G), rtol=1e-9, atol=1e-10)
  rows = y.reshape(-1, C)
  cov = rows.T @ rows / len(rows)
  for g in range(G):
    block = cov[g * 4 : (g + 1) * 4, g * 4 : (g + 1) * 4]
    np.testing.assert_allclose(block, np.eye(4), atol=1e-3)  # I up to eps
  assert np.abs(cov[:4, 4:]).max() > 0.05  # groups are not decorrelated from each other


def test_one_channel_per_group_is_batchnorm():
  x = jnp.asarray(data(), jnp.float32)
  white = make_norm("group_whitening", C, rngs=nnx.Rngs(0), group_size=1)
  bn = make_norm("batchnorm", C, rngs=nnx.Rngs(0), momentum=0.9)
  np.testing.assert_allclose(np.asarray(white(x)), np.asarray(bn(x)), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(np.asarray(white.mean[...]), np.asarray(bn.mean[...]), rtol=1e-6)
  np.testing.assert_allclose(
    np.asarray(white.cov[...]).reshape(C), np.asarray(bn.var[...]), rtol=1e-5
  )


def test_gradient_through_the_whitening_matches_finite_differences():
  x = data((5, 2, 2, C), seed=1)
  r = np.random.default_rng(2).normal(size=x.shape)
  with jax.enable_x64(True):
    state = {"mean": jnp.zeros(C), "cov": jnp.broadcast_to(jnp.eye(4), (G, 4, 4))}
    params = {"scale": jnp.ones(C), "bias": jnp.zeros(C)}

    def loss(x):
      y, _ = gw.group_whitening(x, params, state, train=True, num_groups=G)
      return jnp.sum(y * r)

    grad = np.asarray(jax.grad(loss)(jnp.asarray(x)))
    h = 1e-6
    for index in [(0, 0, 0, 0), (2, 1, 0, 3), (4, 1, 1, 7)]:
      e = np.zeros_like(x)
      e[index] = h
      numeric = (float(loss(jnp.asarray(x + e))) - float(loss(jnp.asarray(x - e)))) / (2 * h)
      assert grad[index] == pytest.approx(numeric, rel=1e-6, abs=1e-9)


def reference_gdwct(x, s, bias, alpha, groups):
  """The official WCT forward on one image batch (channels-last) with a fixed colouring S:
  centring, the block-diagonal X = mask * repeat(S U^T), X c + mu_s, the alpha mix, and the
  official ``reg`` terms mean|cov - I| and mean|U - I|."""
  rows = x.reshape(-1, x.shape[-1])
  n = x.shape[-1] // groups
  centred = rows - rows.mean(0)
  blocks, us, covs = [], [], []
  for g in range(groups):
    sg = s[g]
    d = np.sqrt((sg**2).sum(0, keepdims=True))
    u = sg / d
    blocks.append(sg @ u.T)
    us.append(u)
    xg = centred[:, g * n : (g + 1) * n]
    covs.append(xg.T @ xg / (len(xg) - 1) + 1e-5 * np.eye(n))
  big = np.concatenate(blocks, 0)  # (C, n), stacked as the official torch.cat(X, dim=1)
  big = np.tile(big, (1, groups))  # X.repeat(1, 1, G) -> (C, C)
  mask = np.kron(np.eye(groups), np.ones((n, n)))
  colored = centred @ (mask * big).T + bias
  y = alpha * colored + (1 - alpha) * rows
  reg_w = np.mean(np.abs(np.stack(covs) - np.eye(n)))
  reg_c = np.mean(np.abs(np.stack(us) - np.eye(n)))
  return y.reshape(x.shape), reg_w, reg_c


def test_gdwct_form_matches_the_official_forward_and_penalties():
  x = data(seed=3)
  rng = np.random.default_rng(4)
  s = np.eye(4) + 0.3 * rng.normal(size=(G, 4, 4))
  bias = rng.normal(size=C)
  with jax.enable_x64(True):
    norm = make_norm(
      "group_whitening",
      C,
      rngs=nnx.Rngs(0),
      num_groups=G,
      mode="gdwct",
      coloring="gdwct",
      mix_alpha=0.6,
      whitening_weight=0.001,
      coloring_weight=10.0,
    )
    norm.coloring.value, norm.bias.value = jnp.asarray(s), jnp.asarray(bias)
    norm.alpha.value = jnp.asarray(0.6)
    y = np.asarray(norm(jnp.asarray(x)))
    aux = float(pop_aux_loss(norm))
  y_ref, reg_w, reg_c = reference_gdwct(x, s, bias, 0.6, G)
  np.testing.assert_allclose(y, y_ref, rtol=1e-10, atol=1e-10)
  assert aux == pytest.approx(0.001 * reg_w + 10.0 * reg_c, rel=1e-10)
  with jax.enable_x64(True):
    xg, u = gw.coloring_matrix(jnp.asarray(s[0]))
  d = np.sqrt((s[0] ** 2).sum(0))
  np.testing.assert_allclose(np.asarray(xg), (np.asarray(u) * d) @ np.asarray(u).T, atol=1e-12)


def test_running_statistics_drive_eval_and_round_trip_a_checkpoint(tmp_path):
  norm = make_norm("group_whitening", C, rngs=nnx.Rngs(0), num_groups=G, momentum=0.0)
  x = jnp.asarray(data(), jnp.float32)
  y_train = norm(x)
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(tmp_path / "gw", nnx.to_pure_dict(nnx.state(norm)))
  checkpointer.wait_until_finished()
  fresh = make_norm("group_whitening", C, rngs=nnx.Rngs(0), num_groups=G, momentum=0.0)
  graph, state = nnx.split(fresh)
  nnx.replace_by_pure_dict(state, checkpointer.restore(tmp_path / "gw", nnx.to_pure_dict(state)))
  fresh = nnx.merge(graph, state)
  fresh.eval()
  # momentum 0: the running statistics are this batch's, so eval reproduces training
  np.testing.assert_allclose(np.asarray(fresh(x)), np.asarray(y_train), rtol=1e-4, atol=1e-4)


def test_bad_arguments_are_refused_naming_the_value():
  with pytest.raises(
    ValueError, match=r"num_groups=3: must divide num_features=8; valid: \[1, 2, 4, 8\]"
  ):
    make_norm("group_whitening", C, rngs=nnx.Rngs(0), num_groups=3)
  with pytest.raises(ValueError, match="group_size=3"):
    make_norm("group_whitening", C, rngs=nnx.Rngs(0), group_size=3)
  with pytest.raises(ValueError, match="mode='iter'"):
    make_norm("group_whitening", C, rngs=nnx.Rngs(0), mode="iter")
  with pytest.raises(ValueError, match="coloring='x'"):
    make_norm("group_whitening", C, rngs=nnx.Rngs(0), coloring="x")
  norm = make_norm("group_whitening", C, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="num_features=8 got input with 6 channels"):
    norm(jnp.ones((2, 6)))
