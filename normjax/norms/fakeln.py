"""FakeLN: a LayerNorm whose per-token std is tracked, then frozen, for LayerNorm removal.

Heimersheim 2024 ("You can remove GPT2's LayerNorm by fine-tuning", arXiv 2409.13710) and
Baroni et al. 2025 ("Transformers Don't Need LayerNorm at Inference Time", arXiv 2507.02559);
official code ``submarat/removing-layer-norm:train.py`` (``FakeLayerNorm``, ``LNRemover``,
``CustomTrainer``; read at commit 583a9e6):

    live:    y = (x - mean_d(x)) / sqrt(var_d(x) + eps) * scale + bias     (= LayerNorm)
    frozen:  y = (x - mean_d(x)) / sigma * scale + bias                    (linear in x)

While live, each training call tracks sigma, the mean over batch and positions (real tokens,
``mask``) of the per-token std sqrt(var_d + eps): sigma <- m * sigma + (1 - m) * batch_mean
(m = ``momentum``, 0.9 as the official ``config.py``; the first tracked call sets sigma to the
batch mean, where the official code starts from a precomputed ``std_dicts`` value). From its
freeze step on, sigma stops changing and the norm is the linear map above; the centering and
the affine are linear, so a model whose FakeLNs are all frozen has no per-token normalization
left and each norm folds into the next linear layer (``surgery/folding.py``).

The official ``FakeLayerNorm``: ``recompute_average_std`` runs on EVERY call (an EMA with the
config's momentum 0.9, population variance, eps 1e-5); with ``EXP_RECOMPUTE_STD_ON_REAL=1`` (the
setting under which the EMA reaches the forward at all; ``train_lora.py`` sets it) a live call
then copies the EMA into the buffer a frozen call divides by (``sync_std``). Its fake mode keeps
the centering when the norm has a bias (GPT-2's do; without a bias it returns ``input *
weight``, no centering and no std -- not followed). The attention-input norm ``ln_1`` is ONE
module called three times per forward -- for the Q/K input, for the V input, and again for the
V input of EOT tokens (``std_type='bos'``) -- on ONE std: every call updates the EMA, and while
V is live its two calls re-sync the buffer that the already-frozen Q/K path divides by.

normjax default: the attention-input norm keeps TWO stds (``average_std`` for Q/K,
``value_std`` for V), each updated once per training call while its path is live, so a frozen
Q/K path never moves. ``shared_attention_std=True`` is the official bookkeeping: one
``average_std``; the Q/K path (when frozen) and the V path (when frozen) divide by its value at
the start of the call, and while V is live the call applies three EMA updates (Q/K, V, V-EOT
order, all with the same batch mean), so the next call's frozen Q/K path sees them. Norms with
one use per forward (MLP input, final) behave the same under both bookkeepings.

Removal schedule (``removal_start`` set; ``site`` given by the transformer), for depth L: the
MLP-input norm of block i freezes at start + i*gap_mlp; the attention-input norm's Q/K path at
start + L*gap_mlp + i*gap_qk; its V path at start + L*(gap_mlp + gap_qk) + i*gap_v; the final
norm at start + L*(gap_mlp + gap_qk + gap_v) (official gaps 2/2/3 from step 20 for GPT-2 small;
``removal_schedule``). A norm is frozen on its training call number s+1 when s >= its freeze
step, s = completed training calls counted by its own ``step`` state (the official
``LNRemover`` flips the flag in ``on_step_begin`` of step s), so the trainer needs no special
case and a resumed run continues the schedule.

Evaluation after s completed steps: frozen when s >= freeze step (default). The official
evaluation at s runs BEFORE the next ``on_step_begin``, so a norm whose freeze step is exactly s
is still the real LayerNorm there; ``eval_live_at_freeze_step=True`` gives that (frozen in eval
when s > freeze step). Not followed: the official evaluation forwards also update the EMA (and
re-sync it); here evaluation never changes state.

Aux loss (``aux_loss_weight`` > 0, final norm only; official ``CustomTrainer``): w * mean over
positions of (std_tok - stop_grad(target))^2 with std_tok of the final norm's input, target =
mean of std_tok over the real positions except index 0 of axis 1 (BOS) and, with
``eot_token`` set, except the positions holding that token (official: id 50256, GPT-2's EOT);
the norm then takes ``tokens=`` (the transformer passes the model's token ids). Recorded as
``normjax.variables.AuxLoss`` in training. The official BOS-position and EOT-token special
stds of the forward are not implemented (our LM windows start mid-stream).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from normjax.norms import register
from normjax.norms.base import (
  AffineNorm,
  StatefulNorm,
  apply_affine,
  check_fraction,
  check_positive,
  moments,
  stats_dtype,
)
from normjax.variables import AuxLoss

SCHEDULED_ROLES = ("mlp_input", "attn_input", "final")
OFFICIAL_ATTENTION_CALLS = 3  # ln_1 per forward: Q/K input, V input, V input of EOT tokens


def _masked_mean(values, mask):
  if mask is None:
    return jnp.mean(values)
  keep = jnp.broadcast_to(jnp.asarray(mask, bool), values.shape)
  return jnp.sum(jnp.where(keep, values, 0)) / jnp.maximum(jnp.sum(keep), 1)


def token_std(x, epsilon):
  """sqrt(var_d(x) + eps) per token, shape x.shape[:-1], in float32 or wider."""
  return jnp.sqrt(moments(x, (-1,))[1][..., 0] + epsilon)


def _track(std, tracked, batch_std, momentum, times: int = 1):
  """``times`` EMA updates of ``std`` with ``batch_std`` (the first update ever sets it)."""
  for _ in range(times):
    std = jnp.where(tracked == 0, batch_std, momentum * std + (1 - momentum) * batch_std)
    tracked = tracked + 1
  return std, tracked


def fake_layer_norm(x, params, state, *, train, frozen, mask=None, epsilon=1e-6, momentum=0.9):
  """One FakeLN path over the last axis.

  Args:
    x: ``(..., C)``. params: ``{'scale', 'bias'}`` (optional keys, as LayerNorm).
    state: ``{'average_std': (), 'tracked': int32 ()}`` (tracked = updates so far).
    train: update the tracked std (only while live).
    frozen: bool (array): use ``average_std`` instead of the per-token std.

  Returns:
    ``(y, new_state)``, y in ``x.dtype``.
  """
  h = x.astype(stats_dtype(x))
  mean, var = moments(h, (-1,))
  std = jnp.sqrt(var + epsilon)
  denominator = jnp.where(frozen, state["average_std"].astype(h.dtype), std)
  y = apply_affine((h - mean) / denominator, params).astype(x.dtype)
  if not train:
    return y, state
  batch_std = jax.lax.stop_gradient(_masked_mean(std[..., 0], mask))
  old = state["average_std"]
  tracked_std, tracked = _track(old, state["tracked"], batch_std.astype(old.dtype), momentum)
  new_state = {
    "average_std": jnp.where(frozen, old, tracked_std),
    "tracked": jnp.where(frozen, state["tracked"], tracked),
  }
  return y, new_state


def is_frozen_at(step, freeze_step, *, train: bool, eval_live_at_freeze_step: bool = False):
  """Whether a path with ``freeze_step`` (None: never) is frozen after ``step`` training calls."""
  if freeze_step is None:
    return jnp.zeros((), bool)
  if not train and eval_live_at_freeze_step:
    return step > freeze_step
  return step >= freeze_step


def fake_ln(
  x,
  params,
  state,
  *,
  train,
  mask=None,
  freeze_step=None,
  value_freeze_step=None,
  paths="main",
  shared_attention_std=False,
  eval_live_at_freeze_step=False,
  epsilon=1e-6,
  momentum=0.9,
):
  """A whole FakeLN call: the main (or Q/K) path, and with ``paths='qk_v'`` the V path.

  Args:
    state: ``{'average_std', 'tracked', 'step'}`` plus, for a V path with its own std,
      ``{'value_std', 'value_tracked'}``. ``step`` counts completed training calls.
    paths: 'main' (one output) or 'qk_v' (the attention input: ``(y_qk, y_v)``).
    shared_attention_std: the official one-std bookkeeping of the attention input (module doc).
    Others: see ``FakeLN``.

  Returns:
    ``(y or (y_qk, y_v), new_state)``; training increments ``step``.
  """
  frozen = lambda freeze: is_frozen_at(
    state["step"], freeze, train=train, eval_live_at_freeze_step=eval_live_at_freeze_step
  )
  main_state = {"average_std": state["average_std"], "tracked": state["tracked"]}
  new_state = dict(state)
  if paths == "main":
    y, main_new = fake_layer_norm(
      x,
      params,
      main_state,
      train=train,
      frozen=frozen(freeze_step),
      mask=mask,
      epsilon=epsilon,
      momentum=momentum,
    )
    new_state.update(main_new)
  elif shared_attention_std:
    qk_frozen, v_frozen = frozen(freeze_step), frozen(value_freeze_step)
    y_qk, _ = fake_layer_norm(x, params, main_state, train=False, frozen=qk_frozen, epsilon=epsilon)
    y_v, _ = fake_layer_norm(x, params, main_state, train=False, frozen=v_frozen, epsilon=epsilon)
    y = (y_qk, y_v)
    if train:
      old = state["average_std"]
      batch_std = jax.lax.stop_gradient(_masked_mean(token_std(x, epsilon), mask))
      tracked_std, tracked = _track(
        old, state["tracked"], batch_std.astype(old.dtype), momentum, times=OFFICIAL_ATTENTION_CALLS
      )
      new_state.update(
        average_std=jnp.where(v_frozen, old, tracked_std),
        tracked=jnp.where(v_frozen, state["tracked"], tracked),
      )
  elif paths == "qk_v":
    y_qk, main_new = fake_layer_norm(
      x,
      params,
      main_state,
      train=train,
      frozen=frozen(freeze_step),
      mask=mask,
      epsilon=epsilon,
      momentum=momentum,
    )
    value_state = {"average_std": state["value_std"], "tracked": state["value_tracked"]}
    y_v, value_new = fake_layer_norm(
      x,
      params,
      value_state,
      train=train,
      frozen=frozen(value_freeze_step),
      mask=mask,
      epsilon=epsilon,
      momentum=momentum,
    )
    y = (y_qk, y_v)
    new_state.update(
      main_new, value_std=value_new["average_std"], value_tracked=value_new["tracked"]
    )
  else:
    raise ValueError(f"fake_ln paths={paths!r}: 'main' or 'qk_v'")
  if train:
    new_state["step"] = state["step"] + 1
  return y, new_state


def residual_std_loss(x, mask=None, epsilon=1e-6, target_mask=None):
  """mean((std_tok - stop_grad(target))^2) for x (B, T, C), the official aux loss.

  The mean runs over the real positions (``mask``); the target is the mean std_tok over the real
  positions except position 0 (BOS) and, when ``target_mask`` (bool, broadcastable to (B, T);
  False = leave out, e.g. EOT tokens) is given, the positions it excludes.
  """
  std = token_std(x, epsilon)
  keep = jnp.ones(std.shape, bool) if mask is None else jnp.broadcast_to(mask, std.shape)
  if target_mask is not None:
    keep = keep & jnp.broadcast_to(jnp.asarray(target_mask, bool), std.shape)
  if std.ndim >= 2:
    keep = keep.at[:, 0].set(False)
  target = jax.lax.stop_gradient(_masked_mean(std, keep))
  return _masked_mean(jnp.square(std - target), mask)


def removal_schedule(
  depth: int, start: int, gap_mlp: int = 2, gap_qk: int = 2, gap_v: int = 3
) -> dict:
  """Freeze step of every norm: ``{(role, block, path): step}``; ``('final', None, 'main')``.

  Paths: 'main' (the norm's only use, or the attention input's Q/K path) and 'v'.
  """
  for name, value in (
    ("removal_start", start),
    ("gap_mlp", gap_mlp),
    ("gap_qk", gap_qk),
    ("gap_v", gap_v),
  ):
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
class FakeLN(StatefulNorm, AffineNorm):
  """FakeLN module (``fake_ln``): LayerNorm-compatible params ``scale``/``bias``.

  State (``nnx.BatchStat``): ``average_std``, ``tracked``, ``step`` and, for an attention-input
  norm without ``shared_attention_std``, ``value_std``/``value_tracked`` (the V path's own std).

  Args:
    num_features: channels.
    epsilon: as the LayerNorm it replaces (default 1e-6, normjax's ``layernorm`` default; the
      official code and ``configs/gpt2_ln_removal.py`` use 1e-5).
    momentum: EMA weight on the old tracked std (official 0.9; 0 = the last batch's).
    freeze_step: standalone use: freeze from this many completed training calls (None: never).
    removal_start, gap_mlp, gap_qk, gap_v: the staged schedule (``removal_schedule``); needs
      ``site`` (the transformer passes it).
    aux_loss_weight: residual-std auxiliary loss weight (final norm only; official 0.1 for
      GPT-2 small/medium ``*_aux`` configs).
    eot_token: token id left out of the aux-loss target (official 50256); the final norm then
      needs ``tokens=`` in its call (``needs_tokens``).
    shared_attention_std: the official single std of the attention-input norm (module doc).
    eval_live_at_freeze_step: evaluation exactly at a freeze step uses the live norm (official).
    site: position in the network, given by the models (``role``, ``block``, ``depth``).
  """

  needs_site = True
  state_variables = ("average_std", "tracked", "value_std", "value_tracked", "step")
  function = staticmethod(fake_ln)

  def __init__(
    self,
    num_features: int,
    *,
    epsilon: float = 1e-6,
    momentum: float = 0.9,
    freeze_step: int | None = None,
    removal_start: int | None = None,
    gap_mlp: int = 2,
    gap_qk: int = 2,
    gap_v: int = 3,
    aux_loss_weight: float = 0.0,
    eot_token: int | None = None,
    shared_attention_std: bool = False,
    eval_live_at_freeze_step: bool = False,
    use_running_average: bool = False,
    site=None,
    rngs: nnx.Rngs | None = None,
  ):
    del rngs
    check_positive("epsilon", epsilon)
    check_fraction("momentum", momentum, "fakeln")
    if aux_loss_weight < 0:
      raise ValueError(f"fakeln aux_loss_weight={aux_loss_weight!r}: must be >= 0")
    if eot_token is not None and (not isinstance(eot_token, int) or eot_token < 0):
      raise ValueError(f"fakeln eot_token={eot_token!r}: must be a token id >= 0 or None")
    super().__init__(num_features)
    self.epsilon, self.momentum = epsilon, momentum
    self.use_running_average = use_running_average
    self.shared_attention_std = bool(shared_attention_std)
    self.eval_live_at_freeze_step = bool(eval_live_at_freeze_step)
    role = getattr(site, "role", None)
    self.separate_value_path = role == "attn_input"
    self.value_freeze_step = None
    if removal_start is not None:
      if freeze_step is not None:
        raise ValueError(
          "fakeln: give freeze_step (one norm) or removal_start (the staged schedule), not both"
        )
      if role not in SCHEDULED_ROLES:
        raise ValueError(
          f"fakeln removal_start={removal_start}: the removal schedule covers the "
          f"pre placement's norms {SCHEDULED_ROLES}; this norm's role is {role!r} "
          f"(use placement='pre' and no embedding norm)"
        )
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
    self.aux_loss_weight, self.eot_token = aux_loss_weight, eot_token
    self.needs_tokens = self.records_aux_loss and eot_token is not None
    one, zero = jnp.ones((), jnp.float32), jnp.zeros((), jnp.int32)
    self.average_std, self.tracked = nnx.BatchStat(one), nnx.BatchStat(zero)
    own_value_std = self.separate_value_path and not self.shared_attention_std
    self.value_std = nnx.BatchStat(one) if own_value_std else nnx.data(None)
    self.value_tracked = nnx.BatchStat(zero) if own_value_std else nnx.data(None)
    self.step = nnx.BatchStat(zero)

  def function_kwargs(self) -> dict:
    return {
      "freeze_step": self.freeze_step,
      "value_freeze_step": self.value_freeze_step,
      "shared_attention_std": self.shared_attention_std,
      "eval_live_at_freeze_step": self.eval_live_at_freeze_step,
      "epsilon": self.epsilon,
      "momentum": self.momentum,
    }

  def is_frozen(self, value_path: bool = False):
    """Whether the Q/K-or-only path (or the V path) is frozen now, in the current mode."""
    freeze = self.value_freeze_step if value_path else self.freeze_step
    return is_frozen_at(
      self.step[...],
      freeze,
      train=not self.use_running_average,
      eval_live_at_freeze_step=self.eval_live_at_freeze_step,
    )

  def frozen_std(self, value_path: bool = False):
    """The std a frozen path divides by (one shared std with ``shared_attention_std``)."""
    return (self.value_std if value_path and self.value_std is not None else self.average_std)[...]

  def _record_aux_loss(self, x, mask, tokens):
    if not self.records_aux_loss or self.use_running_average:
      return
    target_mask = None
    if self.eot_token is not None:
      if tokens is None:
        raise ValueError(
          f"fakeln eot_token={self.eot_token}: the final norm needs the token "
          f"ids, norm(x, tokens=...) (the transformer passes them)"
        )
      target_mask = jnp.asarray(tokens) != self.eot_token
    loss = residual_std_loss(x, mask, self.epsilon, target_mask)
    self.aux_loss = AuxLoss(self.aux_loss_weight * loss)

  def __call__(self, x, mask=None, tokens=None):
    y = self.run(x, mask, paths="main")
    self._record_aux_loss(x, mask, tokens)
    return y

  def qk_and_v(self, x, mask=None):
    """The attention input norm's two outputs: for the Q/K projections and for V."""
    return self.run(x, mask, paths="qk_v")


__all__ = [
  "fake_layer_norm",
  "fake_ln",
  "is_frozen_at",
  "residual_std_loss",
  "removal_schedule",
  "token_std",
  "FakeLN",
]
