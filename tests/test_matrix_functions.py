"""Symmetric-matrix functions against SciPy in float64, and their Daleckii-Krein backward against
finite differences, also at repeated eigenvalues (where the official masking is wrong)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from normjax.norms import matrix_functions as mf


def spd(rng, n, cond=10.0):
  q, _ = np.linalg.qr(rng.normal(size=(n, n)))
  return (q * np.geomspace(1.0, cond, n)) @ q.T


@pytest.mark.parametrize(
  "name,param,reference",
  [
    ("sqrt", None, scipy.linalg.sqrtm),
    ("inv_sqrt", None, lambda a: np.linalg.inv(scipy.linalg.sqrtm(a))),
    ("log", None, scipy.linalg.logm),
    ("exp", None, scipy.linalg.expm),
    ("pow", 0.5, lambda a: scipy.linalg.fractional_matrix_power(a, 0.5)),
    ("pow", -0.3, lambda a: scipy.linalg.fractional_matrix_power(a, -0.3)),
  ],
)
def test_forward_matches_scipy(name, param, reference):
  a = spd(np.random.default_rng(0), 5)
  with jax.enable_x64(True):
    got = np.asarray(mf.matrix_function(jnp.asarray(a), name, param))
  np.testing.assert_allclose(got, np.real(reference(a)), rtol=1e-10, atol=1e-12)


def test_clamp_is_reeig():
  rng = np.random.default_rng(1)
  a = spd(rng, 4, cond=1e6) * 1e-3
  with jax.enable_x64(True):
    got = np.asarray(mf.clampm(jnp.asarray(a), 1e-4))
  lam, u = np.linalg.eigh(a)
  np.testing.assert_allclose(got, (u * np.maximum(lam, 1e-4)) @ u.T, atol=1e-14)


def numeric_gradient(fn, a, g, h=1e-6):
  """d/dA <g, fn(A)> over symmetric perturbations, entry by entry (float64)."""
  out = np.zeros_like(a)
  for i in range(a.shape[0]):
    for j in range(i, a.shape[0]):
      e = np.zeros_like(a)
      e[i, j] = e[j, i] = h
      d = (np.sum(g * fn(a + e)) - np.sum(g * fn(a - e))) / (2 * h)
      out[i, j] = out[j, i] = d if i == j else d / 2
  return out


@pytest.mark.parametrize(
  "name,param,eigenvalues",
  [
    ("log", None, (0.5, 1.0, 2.0, 4.0)),
    ("sqrt", None, (0.5, 1.0, 2.0, 4.0)),
    ("inv_sqrt", None, (0.5, 1.0, 2.0, 4.0)),
    ("pow", 0.5, (0.5, 1.0, 2.0, 4.0)),
    ("log", None, (1.0, 1.0, 2.0, 2.0 + 1e-9)),  # repeated and near-equal eigenvalues
    ("pow", 0.5, (3.0, 3.0, 3.0, 1.0)),
  ],
)
def test_backward_matches_finite_differences(name, param, eigenvalues):
  rng = np.random.default_rng(2)
  q, _ = np.linalg.qr(rng.normal(size=(4, 4)))
  a = (q * np.array(eigenvalues)) @ q.T
  g = rng.normal(size=(4, 4))
  with jax.enable_x64(True):
    fn = lambda m: np.asarray(mf.matrix_function(jnp.asarray(m), name, param))
    grad = np.asarray(
      jax.grad(lambda m: jnp.sum(jnp.asarray(g) * mf.matrix_function(m, name, param)))(
        jnp.asarray(a)
      )
    )
    numeric = numeric_gradient(fn, a, g)
  np.testing.assert_allclose(mf.sym(grad), numeric, rtol=1e-5, atol=1e-7)


def test_official_mask_is_wrong_at_repeated_eigenvalues():
  """The official code zeroes the 0/0 divided differences: at the identity the gradient of
  log misses every off-diagonal term (the true one is sym(G))."""
  g = np.arange(9.0).reshape(3, 3)
  with jax.enable_x64(True):
    loss = lambda m, official: jnp.sum(jnp.asarray(g) * mf.logm(m, official_mask=official))
    ours = np.asarray(jax.grad(loss)(jnp.eye(3), False))
    official = np.asarray(jax.grad(loss)(jnp.eye(3), True))
  np.testing.assert_allclose(ours, mf.sym(g), atol=1e-12)
  np.testing.assert_allclose(official, np.diag(np.diag(g)), atol=1e-12)


def test_float32_stays_float32_and_batches():
  a = np.stack([spd(np.random.default_rng(i), 3) for i in range(4)]).astype(np.float32)
  out = mf.sqrtm(jnp.asarray(a))
  assert out.dtype == jnp.float32 and out.shape == (4, 3, 3)
  np.testing.assert_allclose(np.asarray(out @ out), a, rtol=1e-4, atol=1e-5)
