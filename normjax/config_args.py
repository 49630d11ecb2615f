"""The one-string config argument: ``--config configs/x.py:data=cifar10,variant=S/16``.

``parse_arg(arg, **defaults)`` follows big_vision's ``configs/common.py:parse_arg``
(re-written): values take the type of their default (bools parse strictly), a bare
first value stands for the first key, a bare later key means ``key=True``, and an
unknown key is an error that lists the known ones.
"""

from __future__ import annotations

import ml_collections


def _convert(key: str, raw: str, default):
  if isinstance(default, bool):
    if raw.lower() in ("true", "1", "yes", ""):
      return True
    if raw.lower() in ("false", "0", "no"):
      return False
    raise ValueError(f"config argument {key}={raw!r}: expected a bool (true/false)")
  if default is None or isinstance(default, str):
    return raw
  try:
    return type(default)(raw)
  except ValueError:
    raise ValueError(f"config argument {key}={raw!r}: expected {type(default).__name__}") from None


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """Parses ``'k1=v1,k2=v2'`` against ``defaults`` into a ConfigDict."""
  result = ml_collections.ConfigDict(dict(defaults))
  if not arg:
    return result
  keys = list(defaults)
  for i, item in enumerate(arg.split(",")):
    if "=" in item:
      key, raw = item.split("=", 1)
    elif i == 0 and keys and not isinstance(defaults[keys[0]], bool):
      key, raw = keys[0], item
    else:
      key, raw = item, ""
    if key not in defaults:
      raise ValueError(f"config argument {key!r} is unknown; known: {', '.join(keys)}")
    if raw == "" and not isinstance(defaults[key], bool):
      raise ValueError(f"config argument {key!r} needs a value ({key}=...)")
    result[key] = _convert(key, raw, defaults[key])
  return result


def check_choice(arg, key: str, choices) -> None:
  """Raises a ValueError naming ``key``, its value and ``choices`` unless ``arg[key]`` is one."""
  if arg[key] not in choices:
    raise ValueError(f"config argument {key}={arg[key]!r}: one of {', '.join(map(str, choices))}")


def trainer_defaults(**overrides) -> ml_collections.ConfigDict:
  """Trainer keys every config shares; a config sets ``data``, ``model``, ``optimizer``.

  ``total_steps`` XOR ``total_epochs`` sets the duration; ``eval_every=0`` evaluates only
  at the end; ``mesh``/``sharding`` are described in ``normjax.sharding``.
  """
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.total_steps = 1000
  c.total_epochs = ml_collections.config_dict.placeholder(float)
  c.batch_size = 128
  c.eval_batch_size = 256
  c.grad_accum_steps = 1  # micro-batches per step (normjax.run.Setup.accumulated_gradients)
  c.log_every = 50
  c.eval_every = 0
  c.checkpoint_every = 500
  c.keep_checkpoints = 3
  c.grad_clip_norm = 1.0
  c.profile = ml_collections.ConfigDict({"start_step": 1, "num_steps": 0})  # metrics_io.Profile
  c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1})
  c.sharding = "data"
  c.schedule = ml_collections.ConfigDict(
    {"warmup_steps": 100, "decay": "cosine", "final_fraction": 0.0}
  )
  for k, v in overrides.items():
    c[k] = v
  return c


def sibling_config(config_file: str, name: str, arg: str | None = None):
  """``get_config(arg)`` of ``<dir of config_file>/<name>.py``: derive a config from another.

  A method's config states only what the method changes, e.g. in ``configs/resnet_evonorm.py``:
  ``c = sibling_config(__file__, 'resnet_batchnorm', f'data={arg.data}')`` then
  ``c.model.norm = 'evonorm_s0'``; the base keeps the data, schedule and paper-scale variants.
  """
  return sibling_module(config_file, name).get_config(arg)


def sibling_module(config_file: str, name: str):
  """The module ``<dir of config_file>/<name>.py`` (configs are files, not a package)."""
  import importlib.util
  import os

  path = os.path.join(os.path.dirname(os.path.abspath(config_file)), f"{name}.py")
  spec = importlib.util.spec_from_file_location(f"normjax_configs.{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def base_arg(arg, keys: tuple[str, ...], **fixed) -> str:
  """The argument string for a base config (``sibling_config``): the values of ``keys``
  that ``arg`` sets (empty strings are unset), then ``fixed``."""
  values = {**{k: arg[k] for k in keys if arg[k] not in ("", None)}, **fixed}
  return ",".join(f"{k}={v}" for k, v in values.items())
