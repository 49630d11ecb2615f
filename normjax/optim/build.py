"""Builds the training optimizer from ``config.optimizer`` and ``config.schedule``.

``config.optimizer``: ``name`` (any registered optimizer), ``learning_rate`` (peak),
``weight_decay``, and every other key forwarded to the optimizer as a keyword argument.
``config.schedule``: ``warmup_steps`` (linear from 0), ``decay`` ('cosine' | 'linear' |
'constant'), ``final_fraction`` (end value as a fraction of the peak).
``config.grad_clip_norm``: global-norm clipping ahead of the optimizer (None = off).
Weight decay skips norm parameters and biases (``labels.decay_mask``).
"""
from __future__ import annotations

import optax

from normjax.optim import OPTIMIZERS, labels

DECAYS = ("cosine", "linear", "constant")
_RESERVED = ("name", "learning_rate", "weight_decay")


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


def make_optimizer(config, total_steps: int):
  """Returns ``(tx, schedule)`` for a trainer config."""
  opt = config.optimizer
  factory = OPTIMIZERS.get(opt.name)
  schedule = make_schedule(float(opt.learning_rate), config.schedule, total_steps)
  kwargs = {k: v for k, v in opt.items() if k not in _RESERVED}
  kwargs = {k: (v.to_dict() if hasattr(v, "to_dict") else v) for k, v in kwargs.items()}
  try:
    tx = factory(schedule, weight_decay=float(opt.get("weight_decay", 0.0)),
                 weight_decay_mask=labels.decay_mask, **kwargs)
  except TypeError as e:
    raise ValueError(
        f"config key optimizer (name={opt.name!r}) has an argument the optimizer does not "
        f"accept: {e}. Keys given: {sorted(kwargs)}") from None
  clip = config.get("grad_clip_norm")
  if clip:
    tx = optax.chain(optax.clip_by_global_norm(float(clip)), tx)
  return tx, schedule
