r"""Classification heads on pooled features: linear, cosine, Grassmann (GCR).

Selected by the ``head`` argument of the image classifiers (ViT, ResNet), keyword arguments in
``head_kwargs``; ``model.head`` / ``model.head_kwargs`` in a config.

* ``'linear'``: ``nnx.Linear(d, K)``, ``logits = x W + b`` (the model's own init; unchanged).
* ``'cosine'``: ``logits_i = gamma * <x / |x|, w_i / |w_i|>`` (signed cosine classifier,
  ``gamma`` default 25); ``kernel`` (d, K) drawn N(0, 1) with unit columns, trained by the
  Euclidean optimizer like any kernel.
* ``'grassmann'``: Grassmann Class Representation (Wang, Li, Zhang, ICCV 2023, arXiv
  2308.01547; official ``innerlee/GCR`` ``gcr/grassmann_head.py``, ``GrassmannClsHead``).
  Class ``i`` is the span of an orthonormal basis ``P_i`` (d, k), ``P_i^T P_i = I_k``, and
  ``logits_i = gamma * |P_i^T x_hat|`` with ``x_hat = x / max(|x|, 1e-12)``
  (``torch.nn.functional.normalize``), ``gamma = 25`` and ``k = subspace_dim`` (official
  configs: 8). Logits lie in [0, gamma] and are invariant to ``P_i -> P_i R`` (R orthogonal):
  they depend on the subspace only. ``k = 1`` is ``gamma |cos|``, not the signed cosine. The
  bases are one leaf ``grassmann_basis`` (K, d, k), initialised as the official
  ``init_weights``: N(0, 1) entries, then the Q of each class's QR (no sign fix). The leaf
  name puts it in the ``'grassmann'`` group of ``normjax.optim.labels.manifold_groups``, for
  ``normjax.optim.grassmann_rsgd`` (which keeps ``P^T P = I``), and out of the weight-decay
  mask. The norm ``|P_i^T x_hat|`` is safe at 0 (gradient 0 there, as torch's ``norm``
  backward; a plain ``sqrt`` would give NaN).

Arithmetic of the cosine and Grassmann heads runs in the wider of float32 and the model's
compute dtype; logits are returned in it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from normjax.models import check_choice

HEADS = ("linear", "cosine", "grassmann")
HEAD_KWARGS = {"linear": (), "cosine": ("gamma",), "grassmann": ("gamma", "subspace_dim")}
NORMALIZE_EPS = 1e-12  # torch.nn.functional.normalize's eps


def safe_norm(x: jax.Array, axis: int = -1) -> jax.Array:
  """``|x|`` along ``axis`` with gradient 0 (not NaN) where ``x = 0``."""
  squares = jnp.sum(jnp.square(x), axis=axis)
  positive = squares > 0
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, squares, 1.0)), 0.0)


def l2_normalize(x: jax.Array) -> jax.Array:
  """``x / max(|x|, 1e-12)`` along the last axis (``torch.nn.functional.normalize``)."""
  return x / jnp.maximum(safe_norm(x)[..., None], NORMALIZE_EPS)


def grassmann_logits(features: jax.Array, bases: jax.Array, gamma: float) -> jax.Array:
  """``gamma * |P_i^T x_hat|`` for features (B, d) and bases (K, d, k) -> (B, K)."""
  projections = jnp.einsum("bd,cdk->bck", l2_normalize(features), bases)
  return gamma * safe_norm(projections)


def cosine_logits(features: jax.Array, kernel: jax.Array, gamma: float) -> jax.Array:
  """``gamma * <x_hat, w_i_hat>`` for features (B, d) and kernel (d, K) -> (B, K)."""
  return gamma * (l2_normalize(features) @ l2_normalize(kernel.T).T)


def orthonormal_bases_init(key, shape, dtype=jnp.float32):
  """N(0, 1) entries, then Q of each basis's QR (official ``GrassmannClsHead.init_weights``)."""
  return jnp.linalg.qr(jax.random.normal(key, shape, dtype))[0]


class CosineHead(nnx.Module):
  """``gamma * cos(x, w_i)`` (see the module docstring)."""

  def __init__(self, in_features: int, num_classes: int, *, gamma: float = 25.0, dtype, rngs):
    kernel = jax.random.normal(rngs.params(), (in_features, num_classes), jnp.float32)
    self.kernel = nnx.Param(kernel / jnp.linalg.norm(kernel, axis=0, keepdims=True))
    self.gamma, self.dtype = float(gamma), jnp.promote_types(dtype, jnp.float32)

  def __call__(self, features: jax.Array) -> jax.Array:
    x = features.astype(self.dtype)
    return cosine_logits(x, self.kernel[...].astype(self.dtype), self.gamma)


class GrassmannHead(nnx.Module):
  """GCR: ``gamma * |P_i^T x_hat|`` with orthonormal bases ``P_i`` (see the module docstring)."""

  def __init__(
    self,
    in_features: int,
    num_classes: int,
    *,
    subspace_dim: int = 8,
    gamma: float = 25.0,
    dtype,
    rngs,
  ):
    if isinstance(subspace_dim, bool) or not isinstance(subspace_dim, int) or subspace_dim < 1:
      raise ValueError(f"model argument head_kwargs.subspace_dim={subspace_dim!r}: must be >= 1")
    if subspace_dim > in_features:
      raise ValueError(
        f"model argument head_kwargs.subspace_dim={subspace_dim}: a class subspace cannot be "
        f"wider than the features ({in_features})"
      )
    shape = (num_classes, in_features, subspace_dim)
    self.grassmann_basis = nnx.Param(orthonormal_bases_init(rngs.params(), shape))
    self.gamma, self.dtype = float(gamma), jnp.promote_types(dtype, jnp.float32)

  def __call__(self, features: jax.Array) -> jax.Array:
    x = features.astype(self.dtype)
    return grassmann_logits(x, self.grassmann_basis[...].astype(self.dtype), self.gamma)


def make_head(
  head: str,
  in_features: int,
  num_classes: int,
  head_kwargs: dict | None,
  *,
  dtype,
  rngs: nnx.Rngs,
  **linear_kwargs,
) -> nnx.Module:
  """The ``head`` module; ``linear_kwargs`` (e.g. ``kernel_init``) go to ``nnx.Linear`` only."""
  check_choice("head", head, HEADS)
  kwargs = dict(head_kwargs or {})
  unknown = sorted(set(kwargs) - set(HEAD_KWARGS[head]))
  if unknown:
    raise ValueError(
      f"model argument head_kwargs={kwargs!r}: {unknown} do not apply to head={head!r}, "
      f"which accepts {list(HEAD_KWARGS[head]) or 'none'}"
    )
  gamma = kwargs.get("gamma", 25.0)
  if "gamma" in kwargs and (isinstance(gamma, bool) or not isinstance(gamma, (int, float))):
    raise ValueError(f"model argument head_kwargs.gamma={gamma!r}: must be a number > 0")
  if gamma <= 0:
    raise ValueError(f"model argument head_kwargs.gamma={gamma!r}: must be a number > 0")
  if head == "linear":
    return nnx.Linear(in_features, num_classes, dtype=dtype, rngs=rngs, **linear_kwargs)
  if head == "cosine":
    return CosineHead(in_features, num_classes, dtype=dtype, rngs=rngs, **kwargs)
  return GrassmannHead(in_features, num_classes, dtype=dtype, rngs=rngs, **kwargs)
