r"""Functions of symmetric matrices through the eigendecomposition, with a safe backward.

For symmetric X = U diag(lam) U^T and a scalar function f, f(X) = U diag(f(lam)) U^T. Its
derivative is the Daleckii-Krein formula: for a cotangent G of f(X),

  dX = U (L o (U^T sym(G) U)) U^T,   L_ij = (f(lam_i) - f(lam_j)) / (lam_i - lam_j),
  L_ii = f'(lam_i)

(the Loewner matrix of divided differences; Brooks et al.'s SPDNet code ``modeig_backward``,
copied into jjscc/GBWBN ``spd/functional.py``). Near-equal eigenvalues are where the naive
quotient breaks down (0/0, or cancellation): here a pair with |lam_i - lam_j| <= rtol *
(|lam_i| + |lam_j|) / 2 uses the limit f'((lam_i + lam_j) / 2) instead, with rtol =
eps^(1/3) of the dtype (6e-6 in float64, 5e-3 in float32: where the quotient's rounding
error eps |f| / |lam_i - lam_j| meets the midpoint rule's truncation error). The official
code sets inf/nan quotients to 0 -- wrong for exactly repeated eigenvalues (the identity
matrix, a diagonal init), whose true entry is f'(lam) -- and keeps near-equal ones.
``official_mask=True`` reproduces that.

Everything runs in the input dtype: float64 when ``jax_enable_x64`` is on and the input is
float64 (the official code is float64 throughout).

Functions (``matrix_function(x, name, param)``; x (..., n, n) symmetric):
``sqrt``, ``inv_sqrt``, ``log``, ``exp``, ``pow`` (param p), ``clamp`` (ReEig: max(lam, param)).
Short names: ``sqrtm``, ``inv_sqrtm``, ``logm``, ``expm``, ``powm``, ``clampm``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


def sym(x):
  """(x + x^T) / 2 over the last two axes."""
  return 0.5 * (x + jnp.swapaxes(x, -1, -2))


def _pow_derivative(lam, p):
  return p * jnp.power(lam, p - 1)


SCALAR_FUNCTIONS = {
  "sqrt": (lambda lam, q: jnp.sqrt(lam), lambda lam, q: 0.5 / jnp.sqrt(lam)),
  "inv_sqrt": (lambda lam, q: jax.lax.rsqrt(lam), lambda lam, q: -0.5 * lam ** (-1.5)),
  "log": (lambda lam, q: jnp.log(lam), lambda lam, q: 1.0 / lam),
  "exp": (lambda lam, q: jnp.exp(lam), lambda lam, q: jnp.exp(lam)),
  "pow": (lambda lam, q: jnp.power(lam, q), _pow_derivative),
  "clamp": (lambda lam, q: jnp.maximum(lam, q), lambda lam, q: (lam > q).astype(lam.dtype)),
}


def eigh(x):
  """Eigenvalues (ascending) and eigenvectors of sym(x), batched over leading axes."""
  return jnp.linalg.eigh(sym(x))


def rebuild(u, values):
  """U diag(values) U^T."""
  return jnp.einsum("...ij,...j,...kj->...ik", u, values, u)


def loewner(lam, f_lam, df_mid, *, official_mask: bool = False):
  """The Daleckii-Krein matrix L of divided differences (see the module docstring).

  ``df_mid``: f' at the pairwise midpoints (..., n, n) (its diagonal is f'(lam_i))."""
  diff = lam[..., :, None] - lam[..., None, :]
  f_diff = f_lam[..., :, None] - f_lam[..., None, :]
  eye = jnp.eye(lam.shape[-1], dtype=bool)
  if official_mask:
    quotient = f_diff / diff
    quotient = jnp.where(jnp.isfinite(quotient) & ~eye, quotient, 0.0)
    return quotient + jnp.where(eye, df_mid, 0.0)
  rtol = jnp.finfo(lam.dtype).eps ** (1.0 / 3.0)
  scale = 0.5 * (jnp.abs(lam[..., :, None]) + jnp.abs(lam[..., None, :]))
  close = jnp.abs(diff) <= rtol * scale
  safe = jnp.where(close, 1.0, diff)
  return jnp.where(close, df_mid, f_diff / safe)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3, 4))
def matrix_function(x, name: str, param=None, official_mask: bool = False, deriv_param=None):
  """f(x) for symmetric x (..., n, n) by eigendecomposition (see the module docstring).

  ``deriv_param``: the parameter the backward's f' uses (default ``param``); GBW-RBN's
  official power-map bug is ``pow`` with ``deriv_param`` = 1/theta (``normjax.models.spdnet``).
  """
  f, _ = SCALAR_FUNCTIONS[name]
  lam, u = eigh(x)
  return rebuild(u, f(lam, param))


def _forward(x, name, param, official_mask, deriv_param):
  f, _ = SCALAR_FUNCTIONS[name]
  lam, u = eigh(x)
  f_lam = f(lam, param)
  return rebuild(u, f_lam), (lam, u, f_lam)


def _backward(name, param, official_mask, deriv_param, residuals, g):
  lam, u, f_lam = residuals
  _, df = SCALAR_FUNCTIONS[name]
  q = param if deriv_param is None else deriv_param
  mid = 0.5 * (lam[..., :, None] + lam[..., None, :])
  if official_mask:  # the official f' term is on the diagonal only
    df_mid = jnp.broadcast_to(df(lam, q)[..., None, :], mid.shape)
  else:
    df_mid = df(mid, q)
  big_l = loewner(lam, f_lam, df_mid, official_mask=official_mask)
  inner = jnp.swapaxes(u, -1, -2) @ sym(g) @ u
  return (u @ (big_l * inner) @ jnp.swapaxes(u, -1, -2),)


matrix_function.defvjp(_forward, _backward)


def sqrtm(x, **kw):
  return matrix_function(x, "sqrt", None, kw.get("official_mask", False))


def inv_sqrtm(x, **kw):
  return matrix_function(x, "inv_sqrt", None, kw.get("official_mask", False))


def logm(x, **kw):
  return matrix_function(x, "log", None, kw.get("official_mask", False))


def expm(x, **kw):
  return matrix_function(x, "exp", None, kw.get("official_mask", False))


def powm(x, p: float, **kw):
  return matrix_function(x, "pow", float(p), kw.get("official_mask", False), kw.get("deriv_p"))


def clampm(x, threshold: float, **kw):
  return matrix_function(x, "clamp", float(threshold), kw.get("official_mask", False))


__all__ = [
  "sym",
  "eigh",
  "rebuild",
  "loewner",
  "matrix_function",
  "sqrtm",
  "inv_sqrtm",
  "logm",
  "expm",
  "powm",
  "clampm",
]
