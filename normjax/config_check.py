"""Config validation that runs before anything is compiled.

Every failure is a ``ValueError`` whose message names the config key, the value given and
what would work. Names are checked against the registries (models, norms, optimizers);
numbers against their ranges; model keyword arguments against the model's signature.
"""

from __future__ import annotations

import inspect

from normjax.config_schema import check_keys
from normjax.models import MODELS
from normjax.norms import NORMS
from normjax.optim import OPTIMIZERS
from normjax.optim.build import DECAYS
from normjax.sharding import RULES
from normjax.tasks import TASKS


def _fail(key, value, expected):
  raise ValueError(f"config key {key}={value!r}: {expected}")


def _positive(config, key, integer=True, allow_zero=False):
  value = config
  for part in key.split("."):
    value = value.get(part) if hasattr(value, "get") else None
  ok = isinstance(value, int) if integer else isinstance(value, (int, float))
  ok = ok and not isinstance(value, bool) and (value >= 0 if allow_zero else value > 0)
  if not ok:
    kind = "integer" if integer else "number"
    _fail(key, value, f"must be a {kind} {'>= 0' if allow_zero else '> 0'}")
  return value


def signature_parameters(factory) -> dict:
  """Keyword parameters of a factory; for a class those of ``__init__`` (NNX modules have a
  metaclass ``__call__`` that hides them from ``inspect.signature(cls)``)."""
  fn = factory.__init__ if isinstance(factory, type) else factory
  params = dict(inspect.signature(fn).parameters)
  params.pop("self", None)
  return params


def model_kwargs(model_cfg, info) -> dict:
  """``config.model`` minus ``name``, plus what the data determines, checked by name."""
  cls = MODELS.get(model_cfg.name)
  params = signature_parameters(cls)
  kwargs = {
    k: (v.to_dict() if hasattr(v, "to_dict") else v) for k, v in model_cfg.items() if k != "name"
  }
  from_data = TASKS.get(info.task).data_kwargs(info)
  for k, v in from_data.items():
    if k in params:
      kwargs.setdefault(k, v)
  accepts_any = any(p.kind == p.VAR_KEYWORD for p in params.values())
  unknown = [k for k in kwargs if k not in params] if not accepts_any else []
  if unknown:
    known = sorted(k for k in params if k != "rngs")
    _fail(
      f"model.{unknown[0]}",
      kwargs[unknown[0]],
      f"not an argument of model {model_cfg.name!r}; it accepts {', '.join(known)}",
    )
  return kwargs


def training_steps(config, info) -> int:
  """The run's length in optimizer steps: ``total_steps``, or ``total_epochs`` of the data."""
  steps, epochs = config.get("total_steps"), config.get("total_epochs")
  if (steps is None) == (epochs is None):
    _fail("total_steps", steps, "set exactly one of total_steps and total_epochs")
  if steps is None:
    _positive(config, "total_epochs", integer=False)
    return max(1, round(epochs * info.num_train / config.batch_size))
  return _positive(config, "total_steps")


def check_config(config, info) -> int:
  """Validates ``config`` against the data ``info``; returns the number of training steps.

  First the type and range of every key (``normjax.config_schema``), then names
  (registries) and what depends on several keys, the data or the devices."""
  check_keys(config)
  MODELS.get(config.model.name)
  if "norm" in config.model:
    NORMS.get(config.model.norm)
  OPTIMIZERS.get(config.optimizer.name)
  model_kwargs(config.model, info)
  task = getattr(MODELS.get(config.model.name), "task", None)
  if task and task != info.task:
    _fail(
      "model.name",
      config.model.name,
      f"a {task} model cannot train on data.name={config.data.name!r} ({info.task} data)",
    )

  steps = training_steps(config, info)
  warmup = config.schedule.get("warmup_steps", 0)
  if not isinstance(warmup, int) or not 0 <= warmup < steps:
    _fail("schedule.warmup_steps", warmup, f"must be an integer in [0, {steps})")
  if config.schedule.get("decay", "cosine") not in DECAYS:
    _fail("schedule.decay", config.schedule.decay, f"valid choices are {DECAYS}")
  if config.get("sharding", "data") not in RULES:
    _fail("sharding", config.sharding, f"valid choices are {RULES}")
  import jax  # device counts are known only after jax.distributed.initialize

  for key in ("batch_size", "eval_batch_size"):
    value = config.get(key, config.batch_size)
    if value % jax.device_count() or value % jax.process_count():
      _fail(
        key,
        value,
        f"must be divisible by the {jax.device_count()} devices "
        f"and {jax.process_count()} processes",
      )
  accum, per_device = config.get("grad_accum_steps", 1), config.batch_size // jax.device_count()
  if per_device % accum:
    _fail(
      "grad_accum_steps",
      accum,
      f"must divide the per-device batch of {per_device} (batch_size={config.batch_size} "
      f"over {jax.device_count()} devices) into equal micro-batches",
    )
  return int(steps)
