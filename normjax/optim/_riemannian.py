r"""Riemannian SGD for SPD and Stiefel parameters (SPDNet, GBW-RBN), as optax transforms.

Official code: jjscc/GBWBN ``GBWBN_SPDNet/spd/optimizers.py`` (``SPDOptim``, ``StiefelOptim``,
``MixOptimizer``; read at 1ec3232), itself Brooks et al.'s SPDNet-BN code. Both transforms
apply the learning rate themselves and return ``new - old`` as the update (the step is a
retraction, not a vector added to the parameter), so they are NOT chained with
``optax.scale_by_learning_rate``; ``optax.apply_updates`` then lands exactly on the retracted
point. Select them by parameter label (``normjax.optim.labels.manifold_groups``: ``'spd'``,
``'stiefel'``, ``'euclidean'``) with ``optax.partition`` (``optimizer.labels`` +
``optimizer.groups`` in a config), AdamW / SGD on the Euclidean rest.

SPD parameter W (n, n), Euclidean gradient G, learning rate lr:

* ``gradient='official'`` (``SPDOptim``): xi = W sym(G) W (the affine-invariant Riemannian
  gradient) and W <- Exp^BW_W(-lr xi) = W + V + L_W[V] W L_W[V] with V = -lr xi (the BW
  exponential as the retraction);
* ``gradient='bw'``: the Bures-Wasserstein Riemannian gradient xi = 4 sym(G W) = 2 (G W + W G)
  (with sym(G): g_W(xi, V) = tr(L_W[xi] V) / 2 = tr(G V) for every symmetric V), then the same
  BW exponential: Riemannian gradient descent under one metric.

Stiefel parameter W (n, p), W^T W = I: the tangent projection xi = G - W sym(W^T G) (Euclidean
metric) and the QR retraction W <- qf(W - lr xi) with the signs fixed so that diag(R) > 0
(the official ``ExpX_stiefel`` is Gram-Schmidt, which is that QR; its projection is Brooks'
G - W G^T W). A parameter whose gradient is zero stays where it is.

Weight decay is not defined on these manifolds: ``weight_decay`` must be 0.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from normjax.optim._registry import register

SPD_GRADIENTS = ("official", "bw")


class RiemannianSGDState(NamedTuple):
  count: jax.Array


def _learning_rate(learning_rate, count):
  return learning_rate(count) if callable(learning_rate) else learning_rate


def _sym(x):
  return 0.5 * (x + jnp.swapaxes(x, -1, -2))


def _lyapunov(x, v):
  lam, u = jnp.linalg.eigh(_sym(x))
  ut = jnp.swapaxes(u, -1, -2)
  return u @ ((ut @ v @ u) / (lam[..., :, None] + lam[..., None, :])) @ ut


def bw_exp(x, v):
  """Exp^BW_X(V) = X + V + L_X[V] X L_X[V]."""
  lv = _lyapunov(x, v)
  return _sym(x + v + lv @ x @ lv)


def spd_riemannian_gradient(grad, param, gradient: str = "official"):
  """The Riemannian gradient of an SPD parameter (see the module docstring)."""
  g = _sym(grad)
  if gradient == "official":
    return param @ g @ param
  return 2 * (g @ param + param @ g)


def scale_by_spd_bw(learning_rate, gradient: str = "official") -> optax.GradientTransformation:
  """W <- Exp^BW_W(-lr xi(G, W)) for SPD leaves; emits new - old (lr applied here)."""
  if gradient not in SPD_GRADIENTS:
    raise ValueError(f"spd_rsgd gradient={gradient!r}: one of {', '.join(SPD_GRADIENTS)}")

  def init(params):
    del params
    return RiemannianSGDState(count=jnp.zeros((), jnp.int32))

  def update(updates, state, params=None):
    if params is None:
      raise ValueError("spd_rsgd needs params (the retraction starts from them)")
    lr = _learning_rate(learning_rate, state.count)

    def step(g, w):
      xi = spd_riemannian_gradient(g, w, gradient)
      return bw_exp(w, (-lr * xi).astype(w.dtype)) - w

    return jax.tree.map(step, updates, params), RiemannianSGDState(count=state.count + 1)

  return optax.GradientTransformation(init, update)


def stiefel_retraction(w, direction):
  """qf(W + direction) with diag(R) > 0 (the Gram-Schmidt factor)."""
  q, r = jnp.linalg.qr(w + direction)
  return q * jnp.sign(jnp.diagonal(r, axis1=-2, axis2=-1))[..., None, :]


def scale_by_stiefel(learning_rate) -> optax.GradientTransformation:
  """W <- qf(W - lr (G - W sym(W^T G))) for Stiefel leaves; emits new - old."""

  def init(params):
    del params
    return RiemannianSGDState(count=jnp.zeros((), jnp.int32))

  def update(updates, state, params=None):
    if params is None:
      raise ValueError("stiefel_rsgd needs params (the retraction starts from them)")
    lr = _learning_rate(learning_rate, state.count)

    def step(g, w):
      xi = g - w @ _sym(jnp.swapaxes(w, -1, -2) @ g)
      return stiefel_retraction(w, (-lr * xi).astype(w.dtype)) - w

    return jax.tree.map(step, updates, params), RiemannianSGDState(count=state.count + 1)

  return optax.GradientTransformation(init, update)


def _no_decay(name, weight_decay):
  if weight_decay:
    raise ValueError(
      f"{name} weight_decay={weight_decay!r}: weight decay is not defined on the manifold; "
      f"set the group's weight_decay to 0"
    )


@register("spd_rsgd")
def spd_rsgd(learning_rate, *, weight_decay=0.0, weight_decay_mask=None, gradient="official"):
  """Riemannian SGD for SPD parameters with the BW exponential (``scale_by_spd_bw``)."""
  del weight_decay_mask
  _no_decay("spd_rsgd", weight_decay)
  return scale_by_spd_bw(learning_rate, gradient)


@register("stiefel_rsgd")
def stiefel_rsgd(learning_rate, *, weight_decay=0.0, weight_decay_mask=None):
  """Riemannian SGD for Stiefel parameters with the QR retraction (``scale_by_stiefel``)."""
  del weight_decay_mask
  _no_decay("stiefel_rsgd", weight_decay)
  return scale_by_stiefel(learning_rate)
