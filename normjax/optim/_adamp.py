r"""AdamP: remove the radial part of the update of scale-invariant weights.

Heo, Chun, Oh, Han, Yun, Kim, Uh, Ha, "AdamP: Slowing Down the Slowdown for Momentum
Optimizers on Scale-invariant Weights", ICLR 2021 (arXiv 2006.08217). Follows the
official code, clovaai/AdamP:adamp/adamp.py (v0.3.0), including its quirks. SGDP, the
same projection on SGD, is in ``_sgdp.py``.

Scale-invariance test and projection, for every leaf with ``ndim > 1`` (1-D leaves are
never projected). With ``g`` the raw gradient, ``p`` the weight and ``u`` the update
direction, two views are tried in order:

* channel view: one row per OUTPUT channel. A Flax kernel is ``(..., in, out)``, so a
  row is ``x[..., j]`` for each index ``j`` of the LAST axis (torch: dim 0);
* layer view: the whole leaf as one row.

A view passes when ``max_rows |cos(g_i, p_i)| < delta / sqrt(row_length)``, with
``cos(x, y) = <x, y> / (max(|x|, eps) max(|y|, eps))`` (``torch.nn.functional.
cosine_similarity``). In the first view that passes the radial part of the update is
removed row by row, ``u_i <- u_i - p_i <p_i, u_i> / (|p_i| + eps)^2``, and the leaf's
weight decay is multiplied by ``wd_ratio``; if none passes ``u`` is unchanged. Both views
are computed from one set of per-channel sums and selected with ``jnp.where``, so the
test is traced, not Python control flow (works under ``jax.jit`` and
``optax.inject_hyperparams``).

AdamP (step t = count + 1, decay ratio r in {1, wd_ratio})::

  m <- b1 m + (1 - b1) g,   v <- b2 v + (1 - b2) g^2
  u  = m / (sqrt(v) / sqrt(1 - b2^t) + eps)         (nesterov: (b1 m + (1 - b1) g) / ...)
  p <- p (1 - lr wd r) - lr / (1 - b1^t) proj(u)

``u`` is a new tensor in the official code (``perturb = exp_avg / denom``), so the
projection never reaches the moments (unlike SGDP's, see ``_sgdp.py``).

The weight decay is decoupled and applied before the step (to the current weights), so
it is part of ``scale_by_adamp`` (the ratio ``r`` is only known there): its output is
``proj(u) / (1 - b1^t) + wd r p`` and the alias chains ``scale_by_learning_rate``. AdamP
equals ``optax.adamw`` on leaves that never pass the test. ``update`` needs ``params``.
Weight decay must not be added to the gradient before this transform (coupled L2 breaks
the test); clipping is fine. Arithmetic runs in the wider of float32 and the leaf's dtype
(float64 runs stay float64); the moments are stored in their own dtypes.
"""

import math
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from normjax.optim._registry import register
from normjax.optim._transforms import (
  bool_mask,
  check_nonnegative,
  compute_dtype,
  require_params,
  unzip,
)


class ScaleByAdamPState(NamedTuple):
  """State of ``scale_by_adamp``: step count and Adam's moments."""

  count: jax.Array  # int32 scalar
  mu: optax.Updates
  nu: optax.Updates


def radial_sums(grad, param, dtype):
  """Per-output-channel (last axis) sums ``(<p, g>, <g, g>, <p, p>)`` of one leaf."""
  p, g = param.astype(dtype), grad.astype(dtype)
  axes = tuple(range(p.ndim - 1))
  return jnp.sum(p * g, axis=axes), jnp.sum(g * g, axis=axes), jnp.sum(p * p, axis=axes)


def project_radial(update, param, sums, pu, *, delta, eps):
  """AdamP's two-view test and projection for one leaf with ``ndim > 1``.

  Args:
    update: the update direction ``u``, in the arithmetic dtype.
    param: the current weight ``p``.
    sums: ``radial_sums(g, p)`` of the raw gradient ``g``.
    pu: the per-output-channel sums ``<p, u>``.
    delta: threshold numerator (in the arithmetic dtype).
    eps: the cosine's and the row normalisation's epsilon (in the arithmetic dtype).

  Returns:
    ``(projected update, passed)``; ``passed`` is a bool scalar (one of the views
    passed, so the decay ratio is ``wd_ratio``).
  """
  p = param.astype(update.dtype)
  # The layer view's sums are the totals of the channel sums. Without the barrier XLA
  # rewrites sum(sum(x, axes)) into a second full pass over x (about 5x slower on CPU).
  pg, gg, pp, pu = jax.lax.optimization_barrier((*sums, pu))
  norm_p, norm_g = jnp.sqrt(pp), jnp.sqrt(gg)
  cos_channel = jnp.abs(pg) / (jnp.maximum(norm_p, eps) * jnp.maximum(norm_g, eps))
  channel_ok = jnp.max(cos_channel) < delta / math.sqrt(p.size // p.shape[-1])
  layer_norm_p = jnp.sqrt(jnp.sum(pp))
  cos_layer = jnp.abs(jnp.sum(pg)) / (
    jnp.maximum(layer_norm_p, eps) * jnp.maximum(jnp.sqrt(jnp.sum(gg)), eps)
  )
  layer_ok = cos_layer < delta / math.sqrt(p.size)
  coef = jnp.where(
    channel_ok,
    pu / jnp.square(norm_p + eps),
    jnp.where(layer_ok, jnp.sum(pu) / jnp.square(layer_norm_p + eps), 0.0),
  )
  return update - p * coef, channel_ok | layer_ok


def scale_by_adamp(
  b1: float = 0.9,
  b2: float = 0.999,
  eps: float = 1e-8,
  delta: float = 0.1,
  wd_ratio: float = 0.1,
  nesterov: bool = False,
  weight_decay: float = 0.0,
  weight_decay_mask: Any = None,
  *,
  mu_dtype: Optional[Any] = None,
) -> optax.GradientTransformation:
  """AdamP's direction plus its decoupled weight decay (see the module docstring).

  Args:
    b1, b2, eps: Adam's decay rates and epsilon (also used by the test and projection).
    delta: the test passes when ``max |cos| < delta / sqrt(row_length)``.
    wd_ratio: weight-decay multiplier for leaves that pass the test.
    nesterov: use ``b1 m + (1 - b1) g`` as the numerator.
    weight_decay: decoupled weight decay (multiplied by the learning rate downstream).
    weight_decay_mask: bool pytree, ``fn(params)`` or a ``labels.LABELS`` name; None
      decays every leaf (torch's ``AdamP(weight_decay=...)``).
    mu_dtype: dtype of the first moment (default: the parameter's).

  Returns:
    A transform whose ``update(grads, state, params)`` needs ``params``.
  """
  check_nonnegative(eps=eps, delta=delta, wd_ratio=wd_ratio, weight_decay=weight_decay)
  mu_dtype = None if mu_dtype is None else jnp.dtype(mu_dtype)

  def init_fn(params):
    return ScaleByAdamPState(
      count=jnp.zeros([], jnp.int32),
      mu=optax.tree.zeros_like(params, dtype=mu_dtype),
      nu=optax.tree.zeros_like(params),
    )

  def update_fn(updates, state, params=None):
    require_params(params, "adamp")
    count = optax.safe_increment(state.count)

    def leaf(g, m, v, p, decays):
      dtype = compute_dtype(g, p)
      c = lambda x: jnp.asarray(x, dtype)
      t = count.astype(dtype)
      bc1, bc2 = 1.0 - jnp.power(c(b1), t), 1.0 - jnp.power(c(b2), t)
      if p.ndim > 1:
        # The test's sums first, from the inputs; the barrier hands the moments a g that
        # XLA cannot share with <g, g>'s square (which would write g^2 out: two passes).
        sums = radial_sums(g, p, dtype)
        sums, g = jax.lax.optimization_barrier((sums, g))
      g_ = g.astype(dtype)
      m_ = c(b1) * m.astype(dtype) + c(1.0 - b1) * g_
      v_ = c(b2) * v.astype(dtype) + c(1.0 - b2) * jnp.square(g_)
      denom = jnp.sqrt(v_) / jnp.sqrt(bc2) + c(eps)
      numer = c(b1) * m_ + c(1.0 - b1) * g_ if nesterov else m_
      u = numer / denom
      ratio = 1.0
      if p.ndim > 1:
        pu = jnp.sum(p.astype(dtype) * u, axis=tuple(range(p.ndim - 1)))
        u, passed = project_radial(u, p, sums, pu, delta=c(delta), eps=c(eps))
        ratio = jnp.where(passed, c(wd_ratio), c(1.0))
      u = u / bc1
      if decays:
        u = u + (c(weight_decay) * ratio) * p.astype(dtype)
      return u.astype(g.dtype), m_.astype(m.dtype), v_.astype(v.dtype)

    decays = bool_mask(weight_decay_mask, params, name="weight_decay_mask")
    outputs = jax.tree.map(leaf, updates, state.mu, state.nu, params, decays)
    new_updates, mu, nu = unzip(updates, outputs, 3)
    return new_updates, ScaleByAdamPState(count=count, mu=mu, nu=nu)

  return optax.GradientTransformation(init_fn, update_fn)


@register("adamp")
def adamp(
  learning_rate: optax.ScalarOrSchedule = 1e-3,
  b1: float = 0.9,
  b2: float = 0.999,
  eps: float = 1e-8,
  weight_decay: float = 0.0,
  delta: float = 0.1,
  wd_ratio: float = 0.1,
  nesterov: bool = False,
  *,
  weight_decay_mask: Any = None,
  mu_dtype: Optional[Any] = None,
) -> optax.GradientTransformation:
  """AdamP (defaults of clovaai/AdamP): ``chain(scale_by_adamp, scale_by_learning_rate)``.

  ``update(grads, state, params)`` needs ``params``. See ``scale_by_adamp``.
  """
  return optax.chain(
    scale_by_adamp(
      b1, b2, eps, delta, wd_ratio, nesterov, weight_decay, weight_decay_mask, mu_dtype=mu_dtype
    ),
    optax.scale_by_learning_rate(learning_rate),
  )
