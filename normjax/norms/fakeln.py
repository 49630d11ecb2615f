"""FakeLN: a LayerNorm whose per-token std is tracked, then frozen, for LayerNorm removal.

Heimersheim 2024 ("You can remove GPT2's LayerNorm by fine-tuning", arXiv 2409.13710) and
Baroni et al. 2025 ("Transformers Don't Need LayerNorm at Inference Time", arXiv 2507.02559);
official code ``submarat/removing-layer-norm:train.py`` (FakeLayerNorm, LNRemover):

    live:    y = (x - mean_d(x)) / sqrt(var_d(x) + eps) * scale + bias     (= LayerNorm)
    frozen:  y = (x - mean_d(x)) / sigma * scale + bias                    (linear in x)

While live, each training call tracks sigma, the mean over batch and positions (real tokens,
``mask``) of the per-token std sqrt(var_d + eps): sigma <- m * sigma + (1 - m) * batch_mean
(the first tracked call sets sigma to the batch mean). From its freeze step on, sigma stops
changing and the norm is the linear map above; the centering and the affine are linear, so a
model whose FakeLNs are all frozen has no per-token normalization left and each norm folds into
the next linear layer (``normjax.norms.folding``). Deviations from the stored official
``train.py``: it keeps only the last batch's mean std (``momentum=0`` here) and its fake mode
drops the centering; we keep the centering (as the paper's formula and the released models,
LN with eps=1e12 and weight x1e6, do), so freezing changes only the std. The official
BOS-position and EOT-token special stds are not implemented (our LM windows start mid-stream).

Removal schedule (``removal_start`` set; ``site`` given by the transformer), for depth L: the
MLP-input norm of block i freezes at start + i*gap_mlp; the attention-input norm's Q/K path at
start + L*gap_mlp + i*gap_qk; its V path at start + L*(gap_mlp + gap_qk) + i*gap_v; the final
norm at start + L*(gap_mlp + gap_qk + gap_v) (official gaps 2/2/3 from step 20 for GPT-2 small;
``removal_schedule``). A norm is frozen on its training call number s+1 when s >= its freeze
step, s = completed training calls counted by its own ``step`` state, so the trainer needs no
special case and a resumed run continues the schedule.

Aux loss (``aux_loss_weight`` > 0, final norm only): w * mean over positions of
(std_tok - stop_grad(target))^2, target = mean of std_tok over every position except index 0
of axis 1 (the official BOS exclusion), recorded as ``normjax.state.AuxLoss`` in training.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from normjax.norms import register
from normjax.norms.basic import (RunningAverageView, AffineNorm, _check_positive, _stats_dtype,
                                 apply_affine, moments)
from normjax.state import AuxLoss

SCHEDULED_ROLES = ("mlp_input", "attn_input", "final")


def _masked_mean(values, mask):
  if mask is None:
    return jnp.mean(values)
  keep = jnp.broadcast_to(jnp.asarray(mask, bool), values.shape)
  return jnp.sum(jnp.where(keep, values, 0)) / jnp.maximum(jnp.sum(keep), 1)


def token_std(x, epsilon):
  """sqrt(var_d(x) + eps) per token, shape x.shape[:-1], in float32 or wider."""
  return jnp.sqrt(moments(x, (-1,))[1][..., 0] + epsilon)


def fake_layer_norm(x, params, state, *, train, frozen, mask=None, epsilon=1e-6, momentum=0.9):
  """FakeLN over the last axis.

  Args:
    x: ``(..., C)``. params: ``{'scale', 'bias'}`` (optional keys, as LayerNorm).
    state: ``{'average_std': (), 'tracked': int32 ()}`` (tracked = updates so far).
    train: update the tracked std (only while live).
    frozen: bool (array): use ``average_std`` instead of the per-token std.

  Returns:
    ``(y, new_state)``, y in ``x.dtype``.
  """
  h = x.astype(_stats_dtype(x))
  mean, var = moments(h, (-1,))
  std = jnp.sqrt(var + epsilon)
  denominator = jnp.where(frozen, state["average_std"].astype(h.dtype), std)
  y = apply_affine((h - mean) / denominator, params).astype(x.dtype)
  if not train:
    return y, state
  batch_std = jax.lax.stop_gradient(_masked_mean(std[..., 0], mask))
  old = state["average_std"]
  tracked = jnp.where(state["tracked"] == 0, batch_std, momentum * old + (1 - momentum) * batch_std)
  new_state = {"average_std": jnp.where(frozen, old, tracked.astype(old.dtype)),
               "tracked": state["tracked"] + jnp.where(frozen, 0, 1).astype(jnp.int32)}
  return y, new_state


def residual_std_loss(x, mask=None, epsilon=1e-6):
  """mean((std_tok - stop_grad(mean std_tok excluding position 0))^2) for x (B, T, C)."""
  std = token_std(x, epsilon)
  keep = jnp.ones(std.shape, bool) if mask is None else jnp.broadcast_to(mask, std.shape)
  if std.ndim >= 2:
    keep = keep.at[:, 0].set(False)
  target = jax.lax.stop_gradient(_masked_mean(std, keep))
  return _masked_mean(jnp.square(std - target), mask)


def removal_schedule(depth: int, start: int, gap_mlp: int = 2, gap_qk: int = 2,
                     gap_v: int = 3) -> dict:
  """Freeze step of every norm: ``{(role, block, path): step}``; ``('final', None, 'main')``.

  Paths: 'main' (the norm's only use, or the attention input's Q/K path) and 'v'.
  """
  for name, value in (("removal_start", start), ("gap_mlp", gap_mlp), ("gap_qk", gap_qk),
                      ("gap_v", gap_v)):
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
      raise ValueError(f"fakeln {name}={value!r}: must be an integer >= 0 (steps)")
  schedule = {}
  qk_start = start + depth * gap_mlp
  v_start = qk_start + depth * gap_qk
  for i in range(depth):
    schedule[("mlp_input", i, "main")] = start + i * gap_mlp
    schedule[("attn_input", i, "main")] = qk_start + i * gap_qk
    schedule[("attn_input", i, "v")] = v_start + i * gap_v
  schedule[("final", None, "main")] = v_start + depth * gap_v
  return schedule


@register("fakeln")
class FakeLN(RunningAverageView, AffineNorm):
  """FakeLN module (``fake_layer_norm``): LayerNorm-compatible params ``scale``/``bias``.

  State (``nnx.BatchStat``): ``average_std``, ``tracked``, ``step`` and, for an attention-input
  norm, ``value_std``/``value_tracked`` (the V path has its own std and freeze step).

  Args:
    num_features: channels.
    epsilon: as the LayerNorm it replaces (default 1e-6, normjax's ``layernorm`` default).
    momentum: EMA weight on the old tracked std (0 = the last batch's, as the stored official
      train.py).
    freeze_step: standalone use: freeze from this many completed training calls (None: never).
    removal_start, gap_mlp, gap_qk, gap_v: the staged schedule (``removal_schedule``); needs
      ``site`` (the transformer passes it).
    aux_loss_weight: residual-std auxiliary loss weight (final norm only; official 0.1 for
      GPT-2 small/medium ``*_aux`` configs).
    site: position in the network, given by the models (``role``, ``block``, ``depth``).
  """
  needs_site = True

  def __init__(self, num_features: int, *, epsilon: float = 1e-6, momentum: float = 0.9,
               freeze_step: int | None = None, removal_start: int | None = None,
               gap_mlp: int = 2, gap_qk: int = 2, gap_v: int = 3, aux_loss_weight: float = 0.0,
               use_running_average: bool = False, site=None, rngs: nnx.Rngs | None = None):
    del rngs
    _check_positive("epsilon", epsilon)
    if not 0.0 <= momentum <= 1.0:
      raise ValueError(f"fakeln momentum={momentum!r}: must be in [0, 1]")
    if aux_loss_weight < 0:
      raise ValueError(f"fakeln aux_loss_weight={aux_loss_weight!r}: must be >= 0")
    super().__init__(num_features)
    self.epsilon, self.momentum = epsilon, momentum
    self.use_running_average = use_running_average
    role = getattr(site, "role", None)
    self.separate_value_path = role == "attn_input"
    self.value_freeze_step = None
    if removal_start is not None:
      if freeze_step is not None:
        raise ValueError("fakeln: give freeze_step (one norm) or removal_start (the staged "
                         "schedule), not both")
      if role not in SCHEDULED_ROLES:
        raise ValueError(f"fakeln removal_start={removal_start}: the removal schedule covers the "
                         f"pre placement's norms {SCHEDULED_ROLES}; this norm's role is {role!r} "
                         f"(use placement='pre' and no embedding norm)")
      schedule = removal_schedule(site.depth, removal_start, gap_mlp, gap_qk, gap_v)
      block = None if role == "final" else site.block
      freeze_step = schedule[(role, block, "main")]
      self.value_freeze_step = schedule.get((role, block, "v"))
    elif freeze_step is not None and self.separate_value_path:
      self.value_freeze_step = freeze_step
    if freeze_step is not None and (not isinstance(freeze_step, int) or freeze_step < 0):
      raise ValueError(f"fakeln freeze_step={freeze_step!r}: must be an integer >= 0 or None")
    self.freeze_step = freeze_step
    self.records_aux_loss = role == "final" and aux_loss_weight > 0
    self.aux_loss_weight = aux_loss_weight
    one, zero = jnp.ones((), jnp.float32), jnp.zeros((), jnp.int32)
    self.average_std, self.tracked = nnx.BatchStat(one), nnx.BatchStat(zero)
    if self.separate_value_path:
      self.value_std, self.value_tracked = nnx.BatchStat(one), nnx.BatchStat(zero)
    self.step = nnx.BatchStat(zero)

  def is_frozen(self, value_path: bool = False):
    """Whether the Q/K-or-only path (or the V path) is frozen at the current step (an array)."""
    freeze = self.value_freeze_step if value_path else self.freeze_step
    if freeze is None:
      return jnp.zeros((), bool)
    return self.step[...] >= freeze

  def frozen_std(self, value_path: bool = False):
    return (self.value_std if value_path else self.average_std)[...]

  def _path(self, x, mask, value_path: bool):
    std_var, tracked_var = ((self.value_std, self.value_tracked) if value_path
                            else (self.average_std, self.tracked))
    train = not self.use_running_average
    y, new = fake_layer_norm(
        x, self.params(), {"average_std": std_var[...], "tracked": tracked_var[...]},
        train=train, frozen=self.is_frozen(value_path), mask=mask, epsilon=self.epsilon,
        momentum=self.momentum)
    if train:
      std_var[...], tracked_var[...] = new["average_std"], new["tracked"]
    return y

  def _finish_call(self, x, mask):
    if not self.use_running_average:
      if self.records_aux_loss:
        self.aux_loss = AuxLoss(self.aux_loss_weight * residual_std_loss(x, mask, self.epsilon))
      self.step[...] = self.step[...] + 1

  def __call__(self, x, mask=None):
    self._check_features(x)
    y = self._path(x, mask, value_path=False)
    self._finish_call(x, mask)
    return y

  def qk_and_v(self, x, mask=None):
    """The attention input norm's two outputs: for the Q/K projections and for V."""
    self._check_features(x)
    y_qk = self._path(x, mask, value_path=False)
    y_v = self._path(x, mask, value_path=True)
    self._finish_call(x, mask)
    return y_qk, y_v


__all__ = ["fake_layer_norm", "residual_std_loss", "removal_schedule", "token_std", "FakeLN"]
