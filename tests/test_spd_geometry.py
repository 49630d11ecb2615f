"""BW / GBW / AIRM operators against SciPy in float64: sqrtm, solve_continuous_lyapunov,
Exp(Log(Y)) = Y, geodesic end points and constant speed, the one-iteration barycentre, the
tangent maps, and gradients through the Lyapunov solve."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from normjax.models import spd_geometry as geo


def spd(rng, n=4, cond=20.0):
  q, _ = np.linalg.qr(rng.normal(size=(n, n)))
  return (q * np.geomspace(0.5, 0.5 * cond, n)) @ q.T


def sqrtm(a):
  return np.real(scipy.linalg.sqrtm(a))


@pytest.fixture
def pair():
  rng = np.random.default_rng(0)
  return spd(rng), spd(rng), rng


def test_lyapunov_matches_scipy_and_its_gradient_finite_differences(pair):
  x, y, rng = pair
  v = rng.normal(size=x.shape)
  v = v + v.T
  with jax.enable_x64(True):
    got = np.asarray(geo.lyapunov(jnp.asarray(x), jnp.asarray(v)))
    r = rng.normal(size=x.shape)
    loss = lambda a, b: jnp.sum(jnp.asarray(r) * geo.lyapunov(a, b))
    gx, gv = jax.grad(loss, argnums=(0, 1))(jnp.asarray(x), jnp.asarray(v))
    h = 1e-6
    for i, j in [(0, 0), (1, 2), (3, 1)]:
      e = np.zeros_like(x)
      e[i, j] = h
      num_x = (
        float(loss(jnp.asarray(x + e), jnp.asarray(v)))
        - float(loss(jnp.asarray(x - e), jnp.asarray(v)))
      ) / (2 * h)
      num_v = (
        float(loss(jnp.asarray(x), jnp.asarray(v + e)))
        - float(loss(jnp.asarray(x), jnp.asarray(v - e)))
      ) / (2 * h)
      assert float(gx[i, j]) == pytest.approx(num_x, rel=1e-6, abs=1e-9)
      assert float(gv[i, j]) == pytest.approx(num_v, rel=1e-6, abs=1e-9)
  np.testing.assert_allclose(got, scipy.linalg.solve_continuous_lyapunov(x, v), rtol=1e-10)


def test_bw_distance_and_sqrt_product_match_scipy(pair):
  x, y, _ = pair
  with jax.enable_x64(True):
    d2 = float(geo.bw_distance2(jnp.asarray(x), jnp.asarray(y)))
    c = np.asarray(geo.bw_sqrt_product(jnp.asarray(x), jnp.asarray(y)))
  expected = np.trace(x) + np.trace(y) - 2 * np.trace(sqrtm(sqrtm(x) @ y @ sqrtm(x)))
  assert d2 == pytest.approx(expected, rel=1e-10)
  np.testing.assert_allclose(c @ c, x @ y, rtol=1e-9, atol=1e-9)  # (XY)^1/2 squared is XY
  np.testing.assert_allclose(c, np.real(scipy.linalg.sqrtm(x @ y)), rtol=1e-8, atol=1e-9)


def test_bw_exp_inverts_log_and_the_identity_forms(pair):
  x, y, _ = pair
  with jax.enable_x64(True):
    v = geo.bw_log(jnp.asarray(x), jnp.asarray(y))
    back = np.asarray(geo.bw_exp(jnp.asarray(x), v))
    at_identity = np.asarray(geo.bw_log(jnp.eye(4), jnp.asarray(y)))
    log_i = np.asarray(geo.bw_log_identity(jnp.asarray(y)))
    exp_i = np.asarray(geo.bw_exp_identity(jnp.asarray(log_i)))
    exp_general = np.asarray(geo.bw_exp(jnp.eye(4), jnp.asarray(log_i)))
  np.testing.assert_allclose(back, y, rtol=1e-9, atol=1e-9)
  np.testing.assert_allclose(at_identity, 2 * sqrtm(y) - 2 * np.eye(4), rtol=1e-9, atol=1e-10)
  np.testing.assert_allclose(log_i, at_identity, rtol=1e-9, atol=1e-10)
  np.testing.assert_allclose(exp_i, y, rtol=1e-9, atol=1e-10)
  np.testing.assert_allclose(exp_general, y, rtol=1e-9, atol=1e-10)


def test_bw_geodesic_end_points_and_constant_speed(pair):
  x, y, _ = pair
  with jax.enable_x64(True):
    gamma = lambda t: geo.bw_geodesic(jnp.asarray(x), jnp.asarray(y), t)
    np.testing.assert_allclose(np.asarray(gamma(0.0)), x, atol=1e-10)
    np.testing.assert_allclose(np.asarray(gamma(1.0)), y, atol=1e-9)
    d = np.sqrt(float(geo.bw_distance2(jnp.asarray(x), jnp.asarray(y))))
    for t in (0.1, 0.35, 0.8):
      dt = np.sqrt(float(geo.bw_distance2(jnp.asarray(x), gamma(t))))
      assert dt == pytest.approx(t * d, rel=1e-7)
    # the geodesic's initial velocity is Log_X(Y)
    h = 1e-5
    velocity = (np.asarray(gamma(h)) - np.asarray(gamma(-h))) / (2 * h)
    np.testing.assert_allclose(
      velocity, np.asarray(geo.bw_log(jnp.asarray(x), jnp.asarray(y))), rtol=1e-6, atol=1e-7
    )


def test_one_barycentre_iteration_matches_numpy_and_dispersion(pair):
  _, _, rng = pair
  xs = np.stack([spd(rng, cond=5.0) for _ in range(6)])
  with jax.enable_x64(True):
    got = np.asarray(geo.bw_barycentre_step(jnp.asarray(xs)))
    disp = float(geo.bw_dispersion_identity(jnp.asarray(xs), theta=0.5))
  g0 = xs.mean(0)
  g0s, g0is = sqrtm(g0), np.linalg.inv(sqrtm(g0))
  h = np.mean([sqrtm(g0s @ x @ g0s) for x in xs], 0)
  np.testing.assert_allclose(got, g0is @ h @ h @ g0is, rtol=1e-9)
  expected = np.mean([np.trace(x) + 4 - 2 * np.trace(sqrtm(x)) for x in xs]) / 0.25
  assert disp == pytest.approx(expected, rel=1e-10)
  # one iteration is close to, not equal to, the converged barycentre (official behaviour)
  g = g0
  for _ in range(100):
    gs, gis = sqrtm(g), np.linalg.inv(sqrtm(g))
    h = np.mean([sqrtm(gs @ x @ gs) for x in xs], 0)
    g = gis @ h @ h @ gis
  assert 0 < np.abs(got - g).max() < 0.1 * np.abs(g0 - g).max() + 1e-12


def test_tangent_maps_are_the_official_eigenbasis_scalings(pair):
  x, _, rng = pair
  v = rng.normal(size=x.shape)
  v = v + v.T
  lam, u = np.linalg.eigh(x)
  inner = u.T @ v @ u
  with jax.enable_x64(True):
    to_i = np.asarray(geo.to_identity_tangent(jnp.asarray(x), jnp.asarray(v)))
    from_i = np.asarray(geo.from_identity_tangent(jnp.asarray(x), jnp.asarray(v)))
  pair_sum = lam[:, None] + lam[None, :]
  np.testing.assert_allclose(to_i, u @ (np.sqrt(2 / pair_sum) * inner) @ u.T, rtol=1e-9)
  np.testing.assert_allclose(from_i, u @ (np.sqrt(pair_sum / 2) * inner) @ u.T, rtol=1e-9)


def test_gbw_distance_is_bw_after_the_congruence(pair):
  x, y, rng = pair
  m = spd(rng, cond=3.0)
  mis = np.linalg.inv(sqrtm(m))
  with jax.enable_x64(True):
    got = float(geo.bw_distance2(jnp.asarray(mis @ x @ mis), jnp.asarray(mis @ y @ mis)))
  a, b = mis @ x @ mis, mis @ y @ mis
  expected = np.trace(a) + np.trace(b) - 2 * np.trace(sqrtm(sqrtm(a) @ b @ sqrtm(a)))
  assert got == pytest.approx(expected, rel=1e-10)


def test_airm_operators(pair):
  x, y, _ = pair
  with jax.enable_x64(True):
    v = geo.airm_log(jnp.asarray(x), jnp.asarray(y))
    back = np.asarray(geo.airm_exp(jnp.asarray(x), v))
    half = geo.airm_geodesic(jnp.asarray(x), jnp.asarray(y), 0.5)
    d = float(geo.airm_distance2(jnp.asarray(x), jnp.asarray(y)))
    d_half = float(geo.airm_distance2(jnp.asarray(x), half))
  np.testing.assert_allclose(back, y, rtol=1e-9, atol=1e-9)
  xis = np.linalg.inv(sqrtm(x))
  expected = np.sum(np.real(scipy.linalg.logm(xis @ y @ xis)) ** 2)
  assert d == pytest.approx(expected, rel=1e-9)
  assert d_half == pytest.approx(d / 4, rel=1e-8)


def test_non_spd_input_is_refused():
  with pytest.raises(ValueError, match="not positive definite \\(smallest eigenvalue -1"):
    geo.check_spd(np.diag([1.0, -1.0]), "x")
  with pytest.raises(ValueError, match="not symmetric"):
    geo.check_spd(np.array([[1.0, 2.0], [0.0, 1.0]]), "x")
  with pytest.raises(ValueError, match="square"):
    geo.check_spd(np.ones((2, 3)), "x")
  geo.check_spd(np.eye(3)[None].repeat(2, 0), "x")
