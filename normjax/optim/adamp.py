r"""AdamP and SGDP: remove the radial part of the update of scale-invariant weights.

Heo, Chun, Oh, Han, Yun, Kim, Uh, Ha, "AdamP: Slowing Down the Slowdown for Momentum
Optimizers on Scale-invariant Weights", ICLR 2021 (arXiv 2006.08217). Follows the
official code, clovaai/AdamP:adamp/adamp.py and adamp/sgdp.py (v0.3.0), including
its quirks.

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

SGDP::

  buf <- momentum buf + (1 - dampening) g            (no first-step special case)
  d    = g + momentum buf if nesterov else buf
  p <- p (1 - lr wd r / (1 - momentum)) - lr proj(d)

The weight decay is decoupled and applied before the step (to the current weights), so
it is part of ``scale_by_adamp`` / ``scale_by_sgdp`` (the ratio ``r`` is only known
there): their output is ``proj(u) / (1 - b1^t) + wd r p`` (SGDP: ``proj(d) + wd r p /
(1 - momentum)``) and the aliases chain ``scale_by_learning_rate``. AdamP equals
``optax.adamw`` and SGDP equals ``optax.sgd(momentum)`` (plus the scaled decay) on leaves
that never pass the test. ``update`` needs ``params``. Weight decay must not be added to
the gradient before these transforms (coupled L2 breaks the test); clipping is fine.
"""
from __future__ import annotations

import math
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from normjax.optim import labels, register

_F32 = jnp.float32


class ScaleByAdamPState(NamedTuple):
  """State of ``scale_by_adamp``: step count and Adam's moments."""
  count: jax.Array  # int32 scalar
  mu: optax.Updates
  nu: optax.Updates


class ScaleBySGDPState(NamedTuple):
  """State of ``scale_by_sgdp``: step count and the momentum buffer."""
  count: jax.Array  # int32 scalar
  momentum: optax.Updates


def radial_sums(grad, param):
  """Per-output-channel (last axis) float32 sums ``(<p, g>, <g, g>, <p, p>)`` of one leaf."""
  p, g = param.astype(_F32), grad.astype(_F32)
  axes = tuple(range(p.ndim - 1))
  return jnp.sum(p * g, axis=axes), jnp.sum(g * g, axis=axes), jnp.sum(p * p, axis=axes)


def project_radial(update, param, sums, pu, *, delta, eps):
  """AdamP's two-view test and projection for one leaf with ``ndim > 1``.

  Args:
    update: the update direction ``u`` (float32).
    param: the current weight ``p``.
    sums: ``radial_sums(g, p)`` of the raw gradient ``g``.
    pu: the per-output-channel sums ``<p, u>``.
    delta: threshold numerator.
    eps: the cosine's and the row normalisation's epsilon.

  Returns:
    ``(projected update, passed)``; ``passed`` is a bool scalar (one of the views
    passed, so the decay ratio is ``wd_ratio``).
  """
  p = param.astype(_F32)
  # The layer view's sums are the totals of the channel sums. Without the barrier XLA
  # rewrites sum(sum(x, axes)) into a second full pass over x (about 5x slower on CPU).
  pg, gg, pp, pu = jax.lax.optimization_barrier((*sums, pu))
  norm_p, norm_g = jnp.sqrt(pp), jnp.sqrt(gg)
  cos_channel = jnp.abs(pg) / (jnp.maximum(norm_p, eps) * jnp.maximum(norm_g, eps))
  channel_ok = jnp.max(cos_channel) < delta / math.sqrt(p.size // p.shape[-1])
  layer_norm_p = jnp.sqrt(jnp.sum(pp))
  cos_layer = jnp.abs(jnp.sum(pg)) / (
      jnp.maximum(layer_norm_p, eps) * jnp.maximum(jnp.sqrt(jnp.sum(gg)), eps))
  layer_ok = cos_layer < delta / math.sqrt(p.size)
  coef = jnp.where(channel_ok, pu / jnp.square(norm_p + eps),
                   jnp.where(layer_ok, jnp.sum(pu) / jnp.square(layer_norm_p + eps), 0.0))
  return update - p * coef, channel_ok | layer_ok


def _decay_flags(weight_decay_mask, params):
  """Per-leaf Python bools: which leaves decay (all when the mask is None)."""
  leaves, treedef = jax.tree.flatten(params)
  if weight_decay_mask is None:
    return [True] * len(leaves)
  mask = labels.resolve(weight_decay_mask)
  mask = mask(params) if callable(mask) else mask
  try:
    return [bool(m) for m in treedef.flatten_up_to(mask)]
  except (ValueError, TypeError) as e:
    raise ValueError(f"weight_decay_mask must have the structure of params: {e}") from None


def _require_params(params, name):
  if params is None:
    raise ValueError(f"{name}.update needs params (the scale-invariance test and the "
                     f"projection use the weights): call update(grads, state, params)")


def _check_nonnegative(**values):
  for name, value in values.items():
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0:
      raise ValueError(f"{name}={value!r}: must be >= 0")


def scale_by_adamp(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
                   delta: float = 0.1, wd_ratio: float = 0.1, nesterov: bool = False,
                   weight_decay: float = 0.0, weight_decay_mask: Any = None, *,
                   mu_dtype: Optional[Any] = None) -> optax.GradientTransformation:
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
  _check_nonnegative(eps=eps, delta=delta, wd_ratio=wd_ratio, weight_decay=weight_decay)
  mu_dtype = None if mu_dtype is None else jnp.dtype(mu_dtype)

  def init_fn(params):
    return ScaleByAdamPState(
        count=jnp.zeros([], jnp.int32),
        mu=optax.tree.zeros_like(params, dtype=mu_dtype),
        nu=optax.tree.zeros_like(params))

  def update_fn(updates, state, params=None):
    _require_params(params, "adamp")
    t = optax.safe_increment(state.count).astype(_F32)
    bc1 = 1.0 - jnp.power(jnp.asarray(b1, _F32), t)
    bc2 = 1.0 - jnp.power(jnp.asarray(b2, _F32), t)
    leaves_g, treedef = jax.tree.flatten(updates)
    leaves_m = treedef.flatten_up_to(state.mu)
    leaves_v = treedef.flatten_up_to(state.nu)
    leaves_p = treedef.flatten_up_to(params)
    decays = _decay_flags(weight_decay_mask, params)
    out, new_m, new_v = [], [], []
    for g, m, v, p, decays_leaf in zip(leaves_g, leaves_m, leaves_v, leaves_p, decays):
      if p.ndim > 1:
        # The test's sums first, from the inputs; the barrier hands the moments a g that
        # XLA cannot share with <g, g>'s square (which would write g^2 out: two passes).
        sums = radial_sums(g, p)
        sums, g = jax.lax.optimization_barrier((sums, g))
      g32 = g.astype(_F32)
      m32 = b1 * m.astype(_F32) + (1.0 - b1) * g32
      v32 = b2 * v.astype(_F32) + (1.0 - b2) * jnp.square(g32)
      denom = jnp.sqrt(v32) / jnp.sqrt(bc2) + eps
      numer = b1 * m32 + (1.0 - b1) * g32 if nesterov else m32
      u = numer / denom
      ratio = 1.0
      if p.ndim > 1:
        pu = jnp.sum(p.astype(_F32) * u, axis=tuple(range(p.ndim - 1)))
        u, passed = project_radial(u, p, sums, pu, delta=delta, eps=eps)
        ratio = jnp.where(passed, wd_ratio, 1.0)
      u = u / bc1
      if decays_leaf:
        u = u + (weight_decay * ratio) * p.astype(_F32)
      out.append(u.astype(g.dtype))
      new_m.append(m32.astype(m.dtype))
      new_v.append(v32.astype(v.dtype))
    return treedef.unflatten(out), ScaleByAdamPState(
        count=optax.safe_increment(state.count),
        mu=treedef.unflatten(new_m), nu=treedef.unflatten(new_v))

  return optax.GradientTransformation(init_fn, update_fn)


@register("adamp")
def adamp(learning_rate: optax.ScalarOrSchedule = 1e-3, b1: float = 0.9, b2: float = 0.999,
          eps: float = 1e-8, weight_decay: float = 0.0, delta: float = 0.1,
          wd_ratio: float = 0.1, nesterov: bool = False, *, weight_decay_mask: Any = None,
          mu_dtype: Optional[Any] = None) -> optax.GradientTransformation:
  """AdamP (defaults of clovaai/AdamP): ``chain(scale_by_adamp, scale_by_learning_rate)``.

  ``update(grads, state, params)`` needs ``params``. See ``scale_by_adamp``.
  """
  return optax.chain(
      scale_by_adamp(b1, b2, eps, delta, wd_ratio, nesterov, weight_decay,
                     weight_decay_mask, mu_dtype=mu_dtype),
      optax.scale_by_learning_rate(learning_rate))


def scale_by_sgdp(momentum: float = 0.0, dampening: float = 0.0, nesterov: bool = False,
                  eps: float = 1e-8, delta: float = 0.1, wd_ratio: float = 0.1,
                  weight_decay: float = 0.0, weight_decay_mask: Any = None, *,
                  momentum_dtype: Optional[Any] = None) -> optax.GradientTransformation:
  """SGDP's direction plus its decoupled weight decay ``wd r p / (1 - momentum)``.

  The momentum buffer is kept even when ``momentum == 0`` (it then equals
  ``(1 - dampening) g``), so ``momentum`` can be injected as a hyperparameter.
  ``weight_decay_mask`` as in ``scale_by_adamp``.
  """
  _check_nonnegative(momentum=momentum, dampening=dampening, eps=eps, delta=delta,
                     wd_ratio=wd_ratio, weight_decay=weight_decay)
  if isinstance(momentum, (int, float)) and momentum >= 1:
    raise ValueError(f"momentum={momentum!r}: must be < 1 (SGDP divides the weight decay "
                     f"by 1 - momentum)")
  momentum_dtype = None if momentum_dtype is None else jnp.dtype(momentum_dtype)

  def init_fn(params):
    return ScaleBySGDPState(count=jnp.zeros([], jnp.int32),
                            momentum=optax.tree.zeros_like(params, dtype=momentum_dtype))

  def update_fn(updates, state, params=None):
    _require_params(params, "sgdp")
    leaves_g, treedef = jax.tree.flatten(updates)
    leaves_b = treedef.flatten_up_to(state.momentum)
    leaves_p = treedef.flatten_up_to(params)
    decays = _decay_flags(weight_decay_mask, params)
    out, new_b = [], []
    for g, b, p, decays_leaf in zip(leaves_g, leaves_b, leaves_p, decays):
      g32 = g.astype(_F32)
      b32 = momentum * b.astype(_F32) + (1.0 - dampening) * g32
      d = g32 + momentum * b32 if nesterov else b32
      ratio = 1.0
      if p.ndim > 1:
        # <p, d> = <p, g> + momentum <p, buf'> (Nesterov) or <p, buf'>: reduced from the
        # written buffer, not from d (never written out). Reading the old buffer instead
        # makes XLA copy the donated buffer that buf' overwrites in place.
        sums = radial_sums(g, p)
        p_buf = jnp.sum(p.astype(_F32) * b32, axis=tuple(range(p.ndim - 1)))
        pd = sums[0] + momentum * p_buf if nesterov else p_buf
        d, passed = project_radial(d, p, sums, pd, delta=delta, eps=eps)
        ratio = jnp.where(passed, wd_ratio, 1.0)
      if decays_leaf:
        d = d + (weight_decay * ratio / (1.0 - momentum)) * p.astype(_F32)
      out.append(d.astype(g.dtype))
      new_b.append(b32.astype(b.dtype))
    return treedef.unflatten(out), ScaleBySGDPState(
        count=optax.safe_increment(state.count), momentum=treedef.unflatten(new_b))

  return optax.GradientTransformation(init_fn, update_fn)


@register("sgdp")
def sgdp(learning_rate: optax.ScalarOrSchedule, momentum: float = 0.0,
         dampening: float = 0.0, weight_decay: float = 0.0, nesterov: bool = False,
         eps: float = 1e-8, delta: float = 0.1, wd_ratio: float = 0.1, *,
         weight_decay_mask: Any = None,
         momentum_dtype: Optional[Any] = None) -> optax.GradientTransformation:
  """SGDP (defaults of clovaai/AdamP): ``chain(scale_by_sgdp, scale_by_learning_rate)``.

  ``update(grads, state, params)`` needs ``params``. See ``scale_by_sgdp``.
  """
  return optax.chain(
      scale_by_sgdp(momentum, dampening, nesterov, eps, delta, wd_ratio, weight_decay,
                    weight_decay_mask, momentum_dtype=momentum_dtype),
      optax.scale_by_learning_rate(learning_rate))
