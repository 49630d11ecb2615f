r"""SPD-matrix geometry for SPDNet and Riemannian batch norm: Bures-Wasserstein (BW), its
generalised form (GBW) and the affine-invariant metric (AIRM), as pure JAX functions.

Matrix functions go through ``normjax.norms.matrix_functions`` (eigendecomposition with the safe
Daleckii-Krein backward). Shapes (..., n, n); everything in the input dtype (float64 with
``jax_enable_x64``). Formulas as in jjscc/GBWBN ``GBWBN_SPDNet/spd/functional.py`` (read at
1ec3232) and reference/next-methods.md §5; X, Y SPD, V symmetric:

* Lyapunov operator L_X[V]: the solution L of X L + L X = V; in X's eigenbasis
  L_ab = (U^T V U)_ab / (lam_a + lam_b). Its backward is the implicit-function rule
  (V_bar = L_X[L_bar], X_bar = -(V_bar L + L V_bar)), which needs no eigenvector derivative
  and so stays finite at repeated eigenvalues (the official ``Lyapunov_eig_solver`` does the
  same).
* BW: d^2(X, Y) = tr X + tr Y - 2 tr (X^1/2 Y X^1/2)^1/2;
  Log_X(Y) = (XY)^1/2 + (YX)^1/2 - 2X with (XY)^1/2 = X^1/2 (X^1/2 Y X^1/2)^1/2 X^-1/2;
  Exp_X(V) = X + V + L_X[V] X L_X[V]; at I: Log_I(Y) = 2 Y^1/2 - 2I, Exp_I(V) = I + V + V^2/4;
  geodesic gamma(t) = (1-t)^2 X + t^2 Y + t(1-t) [(XY)^1/2 + (YX)^1/2].
* GBW with SPD parameter M: BW after the congruence X -> M^-1/2 X M^-1/2.
* One BW barycentre iteration from G0 = mean_i X_i (the official ``BaryGeom``):
  G = G0^-1/2 [ mean_i (G0^1/2 X_i G0^1/2)^1/2 ]^2 G0^-1/2.
* The official tangent maps ``pal1`` / ``pal2`` (called "parallel transport" in the code; they
  are not the BW parallel transport): in P's eigenbasis (P = Q diag(p) Q^T) V_ab is scaled by
  sqrt(2 / (p_a + p_b)) (T_P -> T_I) or sqrt((p_a + p_b) / 2) (T_I -> T_P). That is the
  operator J_P^{-1/2} / J_P^{1/2} of the Jordan product J_P[V] = (PV + VP) / 2, computed here as
  a matrix function of J_P's n^2 x n^2 Kronecker form, so gradients with respect to P (the
  learned bias) are exact also at repeated eigenvalues (the official code differentiates
  ``torch.svd``, whose backward divides by eigenvalue gaps; its bias starts at
  I + diag(1..n) 1e-7).
* AIRM: Log_X(Y) = X^1/2 log(X^-1/2 Y X^-1/2) X^1/2, Exp_X(V) = X^1/2 exp(X^-1/2 V X^-1/2) X^1/2,
  geodesic X^1/2 (X^-1/2 Y X^-1/2)^t X^1/2, d^2 = ||log(X^-1/2 Y X^-1/2)||_F^2.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from normjax.norms.matrix_functions import expm, inv_sqrtm, logm, powm, sqrtm, sym


def eye_like(x):
  return jnp.eye(x.shape[-1], dtype=x.dtype)


def transpose(x):
  return jnp.swapaxes(x, -1, -2)


def trace(x):
  return jnp.trace(x, axis1=-2, axis2=-1)


def congruence(x, a):
  """a x a (a symmetric)."""
  return a @ x @ a


def check_spd(x, name: str = "input", *, rtol: float = 1e-6):
  """ValueError naming the matrix and its smallest eigenvalue unless concrete ``x`` (..., n, n)
  is symmetric positive definite; traced values pass (checks happen outside ``jax.jit``)."""
  if isinstance(x, jax.core.Tracer):
    return
  a = np.asarray(x, np.float64)
  if a.ndim < 2 or a.shape[-1] != a.shape[-2]:
    raise ValueError(f"{name} of shape {a.shape}: needs (..., n, n) square matrices")
  asym = np.abs(a - np.swapaxes(a, -1, -2)).max(initial=0.0)
  size = np.abs(a).max(initial=0.0)
  if not np.all(np.isfinite(a)) or asym > rtol * max(size, 1e-300):
    raise ValueError(f"{name}: not symmetric (max |X - X^T| = {asym:.3g}); SPD matrices needed")
  smallest = np.linalg.eigvalsh(a).min(initial=np.inf)
  if not smallest > 0:
    raise ValueError(
      f"{name}: not positive definite (smallest eigenvalue {smallest:.3g}); SPD matrices needed"
    )


# ----------------------------------------------------------------------------- Lyapunov
@jax.custom_vjp
def lyapunov(x, v):
  """L_X[V]: the solution L of X L + L X = V (X SPD, V symmetric)."""
  lam, u = jnp.linalg.eigh(sym(x))
  return u @ ((transpose(u) @ v @ u) / (lam[..., :, None] + lam[..., None, :])) @ transpose(u)


def _lyapunov_fwd(x, v):
  solution = lyapunov(x, v)
  return solution, (x, jnp.zeros((0,) + v.shape, v.dtype), solution)


def _lyapunov_bwd(residuals, g):
  x, v_like, solution = residuals
  v_bar = lyapunov(x, g)
  x_bar = -sym(v_bar @ transpose(solution) + transpose(solution) @ v_bar)  # x enters as sym(x)
  return _unbroadcast(x_bar, x.shape), _unbroadcast(v_bar, v_like.shape[1:])


def _unbroadcast(cotangent, shape):
  """Sums a cotangent over the leading axes broadcasting added to an input of ``shape``."""
  extra = cotangent.ndim - len(shape)
  cotangent = jnp.sum(cotangent, axis=tuple(range(extra))) if extra > 0 else cotangent
  keep = tuple(i for i, d in enumerate(shape) if d == 1 and cotangent.shape[i] != 1)
  return jnp.sum(cotangent, axis=keep, keepdims=True) if keep else cotangent


lyapunov.defvjp(_lyapunov_fwd, _lyapunov_bwd)


# ----------------------------------------------------------------------------- BW
def bw_sqrt_product(x, y):
  """(XY)^1/2 = X^1/2 (X^1/2 Y X^1/2)^1/2 X^-1/2."""
  xs, xis = sqrtm(x), inv_sqrtm(x)
  return xs @ sqrtm(congruence(y, xs)) @ xis


def bw_distance2(x, y):
  """d^2_BW(X, Y) = tr X + tr Y - 2 tr (X^1/2 Y X^1/2)^1/2."""
  xs = sqrtm(x)
  return trace(x) + trace(y) - 2 * trace(sqrtm(congruence(y, xs)))


def bw_log(x, y):
  """Log_X(Y) = (XY)^1/2 + (YX)^1/2 - 2X."""
  c = bw_sqrt_product(x, y)
  return c + transpose(c) - 2 * x


def bw_exp(x, v):
  """Exp_X(V) = X + V + L_X[V] X L_X[V]."""
  lv = lyapunov(x, v)
  return x + v + lv @ x @ lv


def bw_log_identity(y):
  """Log_I(Y) = 2 Y^1/2 - 2I."""
  return 2 * sqrtm(y) - 2 * eye_like(y)


def bw_exp_identity(v):
  """Exp_I(V) = I + V + V^2/4."""
  return eye_like(v) + v + 0.25 * (v @ v)


def bw_geodesic(x, y, t):
  """gamma(t) = (1-t)^2 X + t^2 Y + t(1-t) [(XY)^1/2 + (YX)^1/2]."""
  c = bw_sqrt_product(x, y)
  return (1 - t) ** 2 * x + t**2 * y + t * (1 - t) * (c + transpose(c))


def bw_barycentre_step(xs, axis: int = 0):
  """One fixed-point iteration from the arithmetic mean (official ``BaryGeom``)."""
  g0 = jnp.mean(xs, axis)
  gs, gis = sqrtm(g0), inv_sqrtm(g0)
  h = jnp.mean(sqrtm(congruence(xs, gs)), axis)
  return congruence(h @ h, gis)


def bw_dispersion_identity(xs, theta: float = 1.0):
  """mean_i d^2_BW(X_i, I) / theta^2: the official "variance" (``cal_var``), about I."""
  n = xs.shape[-1]
  d2 = trace(xs) + n - 2 * trace(sqrtm(xs))
  return jnp.mean(d2) / theta**2


def jordan_operator(p):
  """J_P[V] = (PV + VP)/2 as an (n^2, n^2) matrix acting on row-major vec(V)."""
  n = p.shape[-1]
  eye = jnp.eye(n, dtype=p.dtype)
  return 0.5 * (jnp.kron(p, eye) + jnp.kron(eye, p))


def _apply_operator(op, v):
  n = v.shape[-1]
  flat = v.reshape(*v.shape[:-2], n * n)
  return jnp.einsum("ij,...j->...i", op, flat).reshape(v.shape)


def to_identity_tangent(p, v):
  """The official ``pal1`` map V -> J_P^{-1/2}[V] (T_P -> T_I), P: (n, n), v: (..., n, n)."""
  return _apply_operator(inv_sqrtm(jordan_operator(p)), v)


def from_identity_tangent(p, v):
  """The official ``pal2`` map V -> J_P^{1/2}[V] (T_I -> T_P)."""
  return _apply_operator(sqrtm(jordan_operator(p)), v)


# ----------------------------------------------------------------------------- AIRM
def airm_log(x, y):
  xs, xis = sqrtm(x), inv_sqrtm(x)
  return congruence(logm(congruence(y, xis)), xs)


def airm_exp(x, v):
  xs, xis = sqrtm(x), inv_sqrtm(x)
  return congruence(expm(congruence(v, xis)), xs)


def airm_geodesic(x, y, t):
  xs, xis = sqrtm(x), inv_sqrtm(x)
  return congruence(powm(congruence(y, xis), t), xs)


def airm_distance2(x, y):
  xis = inv_sqrtm(x)
  return jnp.sum(jnp.square(logm(congruence(y, xis))), axis=(-2, -1))


def airm_karcher_step(xs, axis: int = 0):
  """One Karcher-flow step from the arithmetic mean (Brooks et al.'s ``BaryGeom``, k = 1)."""
  g0 = jnp.mean(xs, axis)
  return airm_exp(g0, jnp.mean(airm_log(g0, xs), axis))


__all__ = [
  "check_spd",
  "lyapunov",
  "bw_sqrt_product",
  "bw_distance2",
  "bw_log",
  "bw_exp",
  "bw_log_identity",
  "bw_exp_identity",
  "bw_geodesic",
  "bw_barycentre_step",
  "bw_dispersion_identity",
  "jordan_operator",
  "to_identity_tangent",
  "from_identity_tangent",
  "airm_log",
  "airm_exp",
  "airm_geodesic",
  "airm_distance2",
  "airm_karcher_step",
]
