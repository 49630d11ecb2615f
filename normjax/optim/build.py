"""Builds the training optimizer from a trainer config.

``config.optimizer``:
  * ``name`` (any registered optimizer), ``learning_rate`` (peak), ``weight_decay``;
  * ``decay_mask``: a label name from ``normjax.optim.labels.LABELS`` (default ``'decay'``:
    every matrix outside norm layers; norm parameters and biases are not decayed);
  * ``labels`` + ``groups``: per-label optimizers through ``optax.partition``. ``labels``
    names a label function returning strings (e.g. ``'conda_groups'``), ``groups`` maps each
    label to a spec ``{name, learning_rate, weight_decay, **kwargs}``; a group inherits
    ``name``, ``learning_rate`` and ``weight_decay`` from the top level, never its kwargs;
  * every other key: a keyword argument of the optimizer.
``config.schedule``: ``warmup_steps`` (linear from 0), ``decay`` ('cosine' | 'linear' |
'constant'), ``final_fraction`` (end value as a fraction of the peak); every group's
learning rate follows the same shape.
``config.grad_clip_norm``: global-norm clipping ahead of the optimizer (None = off).
``config.adaptive_grad_clip``: unit-wise adaptive gradient clipping (Brock et al. 2021,
``optax.adaptive_grad_clip``) at this ratio, ahead of the optimizer (None = off).
``config.trainable``: a label name (bool); every other leaf is frozen (its update is
zero, no weight decay), e.g. ``'norm_affine'`` trains BatchNorm and only BatchNorm.
``config.weight_quant``: ``bits`` (None: float weights), ``group_size``, ``rounding``
('stochastic' | 'nearest'), ``mask`` (a label name): ``make_weight_storage``.
"""

from __future__ import annotations

import jax
import optax

from normjax.optim import OPTIMIZERS, float_weights, labels, quantized_weights

DECAYS = ("cosine", "linear", "constant")
_RESERVED = ("name", "learning_rate", "weight_decay", "decay_mask", "labels", "groups")


def make_schedule(peak: float, cfg, total_steps: int) -> optax.Schedule:
  """Linear warmup from 0 to ``peak``, then the chosen decay to ``peak * final_fraction``."""
  warmup = int(cfg.get("warmup_steps", 0))
  decay = cfg.get("decay", "cosine")
  end = peak * float(cfg.get("final_fraction", 0.0))
  if decay not in DECAYS:
    raise ValueError(f"config key schedule.decay={decay!r}: valid choices are {DECAYS}")
  rest = max(total_steps - warmup, 1)
  if decay == "cosine":
    tail = optax.cosine_decay_schedule(peak, rest, alpha=end / peak if peak else 0.0)
  elif decay == "linear":
    tail = optax.linear_schedule(peak, end, rest)
  else:
    tail = optax.constant_schedule(peak)
  if warmup == 0:
    return tail
  return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), tail], [warmup])


def _plain(value):
  return value.to_dict() if hasattr(value, "to_dict") else value


def _single(spec: dict, key: str, schedule_cfg, total_steps: int, decay_mask):
  """One registered optimizer from ``spec``; ``key`` names it in error messages."""
  factory = OPTIMIZERS.get(spec["name"])
  kwargs = {k: _plain(v) for k, v in spec.items() if k not in _RESERVED}
  schedule = make_schedule(float(spec["learning_rate"]), schedule_cfg, total_steps)
  try:
    tx = factory(
      schedule,
      weight_decay=float(spec.get("weight_decay", 0.0)),
      weight_decay_mask=decay_mask,
      **kwargs,
    )
  except TypeError as e:
    raise ValueError(
      f"config key {key} (name={spec['name']!r}) has an argument the optimizer does not "
      f"accept: {e}. Keys given: {sorted(kwargs)}"
    ) from None
  return tx, schedule


def _bool_partition(mask_fn, inner, frozen=optax.set_to_zero()):
  return optax.partition({True: inner, False: frozen}, mask_fn)


def make_optimizer(config, total_steps: int):
  """Returns ``(tx, schedule)`` for a trainer config (``schedule``: the top-level one)."""
  opt = {k: _plain(v) for k, v in config.optimizer.items()}
  decay_mask = labels.resolve(opt.get("decay_mask") or "decay")
  if not opt.get("groups"):
    tx, schedule = _single(opt, "optimizer", config.schedule, total_steps, decay_mask)
  else:
    schedule = make_schedule(float(opt["learning_rate"]), config.schedule, total_steps)
    if not opt.get("labels"):
      raise ValueError(
        "config key optimizer.labels=None: optimizer.groups needs a label "
        f"function name; known: {', '.join(labels.LABELS.names())}"
      )
    inherited = {k: opt[k] for k in ("name", "learning_rate", "weight_decay") if k in opt}
    txs = {
      label: _single(
        {**inherited, **group},
        f"optimizer.groups.{label}",
        config.schedule,
        total_steps,
        decay_mask,
      )[0]
      for label, group in opt["groups"].items()
    }
    label_fn = labels.resolve(opt["labels"])

    def checked_labels(params):
      tree = label_fn(params)
      missing = set(jax.tree.leaves(tree)) - set(txs)
      if missing:
        raise ValueError(
          f"config key optimizer.groups: labels {sorted(missing)} produced by "
          f"{opt['labels']!r} have no group; groups: {sorted(txs)}"
        )
      return tree

    tx = optax.partition(txs, checked_labels)
  clips = []
  if config.get("grad_clip_norm"):
    clips.append(optax.clip_by_global_norm(float(config.grad_clip_norm)))
  if config.get("adaptive_grad_clip"):
    clips.append(optax.adaptive_grad_clip(float(config.adaptive_grad_clip)))
  if clips:
    tx = optax.chain(*clips, tx)
  if config.get("trainable"):  # outermost: frozen gradients never enter the clip norm
    tx = _bool_partition(labels.resolve(config.trainable), tx)
  return tx, schedule


def make_weight_storage(config):
  """The train state's weight storage: ``quantized_weights`` (Q-GaLore's INT8 weights,
  stochastic rounding keyed by ``config.seed`` and the step) when ``config.weight_quant.bits``
  is set, else ``float_weights()``."""
  quant = config.get("weight_quant") if config is not None else None
  if not quant or quant.get("bits") is None:
    return float_weights()
  try:
    return quantized_weights(
      int(quant["bits"]),
      int(quant.get("group_size", 256)),
      quant.get("rounding", "stochastic"),
      quant.get("mask") or "attention_mlp_kernels",
      seed=int(config.get("seed", 0)),
    )
  except ValueError as e:
    raise ValueError(f"config key {e}") from None
