"""Checkpoints of a run: the orbax manager, restore-or-init, save with the finite guard, and
``load_run(workdir)`` for tools and users.

A run's ``checkpoints/<step>/`` holds ``state`` (the train state pytree of
``normjax.run.Setup.init_state``) and ``data`` (the grain iterator position), so a resumed
run continues exactly. ``config.json`` beside ``checkpoints/`` is the resolved config that
produced them (``normjax.workdir``).

Guarantees: orbax writes each step into a temporary directory and renames it when the
write is complete, so a save interrupted at any point (SIGKILL, power loss) is never taken
for a checkpoint. A checkpoint that does not read completely (damaged files) is moved
aside to ``unreadable_checkpoints/`` with a one-line warning, and the next newest one is
restored. A checkpoint that cannot be written (disk full, permissions) stops the run with
``CheckpointError``; the checkpoints written before it stay intact.
"""

from __future__ import annotations

import datetime
import json
import os
import sys

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from normjax import run, sharding, stack_layout
from normjax.optim.labels import path_names
from normjax.state import split


class NonFiniteLoss(RuntimeError):
  """A non-finite loss or parameters: the run stops, the last good checkpoint stays."""


class CheckpointError(RuntimeError):
  """No checkpoint could be read, or one could not be written."""


def _first_line(error: BaseException, limit: int = 300) -> str:
  text = str(error).strip().splitlines()
  line = text[0] if text else type(error).__name__
  return line if len(line) <= limit else line[:limit] + " ..."


def directory(workdir: str) -> str:
  return os.path.abspath(os.path.join(workdir, "checkpoints"))


def make_manager(workdir: str, keep: int) -> ocp.CheckpointManager:
  """The run's asynchronous checkpoint manager, keeping the ``keep`` newest steps."""
  return ocp.CheckpointManager(
    directory(workdir),
    options=ocp.CheckpointManagerOptions(
      max_to_keep=keep, enable_async_checkpointing=True, create=True
    ),
  )


def restore_or_init(manager, setup, state: dict, abstract_state, state_sharding, train_iter):
  """``(state, start_step)``: the latest checkpoint if the run has one (the data iterator is
  restored in place), else ``config.init_from``'s weights with a fresh optimizer (``workdir``:
  a normjax run, ``load_params``; ``hf``: a Hugging Face GPT-2 directory, ``load_hf_params``),
  else ``state`` as given (fresh). Prints which."""
  config = setup.config
  target = ocp.args.StandardRestore(sharding.sharded_specs(abstract_state, state_sharding))
  if manager.all_steps():
    start, restored = restore_latest_readable(manager, target, train_iter)
    print(f"resumed from {manager.directory} at step {start}", flush=True)
    return restored, start
  source = config.get("init_from") or {}
  if source.get("workdir") and source.get("hf"):
    raise ValueError(
      f"config key init_from={dict(source)!r}: give workdir (a normjax run) or hf (a Hugging "
      f"Face GPT-2 directory), not both"
    )
  if source.get("workdir"):
    pretrained = load_params(abstract_state, source.workdir, source.get("step"))
    origin = f"{source.workdir} (step {pretrained['step']})"
  elif source.get("hf"):
    pretrained = load_hf_params(abstract_state, config.model, source.hf)
    origin = f"the Hugging Face GPT-2 {source.hf}"
  else:
    return state, 0
  fresh = jax.device_get(state)
  loaded = {
    **fresh,
    "params": pretrained["params"],
    "model_state": fill(pretrained["model_state"], fresh["model_state"]),
    "opt_state": setup.tx.init(setup.storage.decode(pretrained["params"])),
  }
  print(f"initialized from {origin}", flush=True)
  return jax.device_put(loaded, state_sharding), 0


def _quiet_closed_loop_callbacks():
  """A failed orbax read returns while tensorstore still completes its other reads; their
  callbacks then hit orbax's closed event loop, and tensorstore reports each RuntimeError
  as unraisable: dozens of tracebacks after one clear warning. This hook drops exactly
  those (the read already failed and is reported) and passes everything else on."""
  previous = sys.unraisablehook
  if getattr(previous, "normjax_quiet", False):
    return

  def hook(unraisable):
    value = unraisable.exc_value
    if isinstance(value, RuntimeError) and str(value) == "Event loop is closed":
      return
    previous(unraisable)

  hook.normjax_quiet = True
  sys.unraisablehook = hook


def restore_latest_readable(manager, target, train_iter) -> tuple[int, dict]:
  """``(step, state)`` of the newest checkpoint that reads completely; unreadable ones are
  moved aside (never deleted) with a warning. The data iterator is restored in place."""
  _quiet_closed_loop_callbacks()
  moved = []
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      restored = manager.restore(
        step,
        args=ocp.args.Composite(state=target, data=grain.checkpoint.CheckpointRestore(train_iter)),
      )
      return step, restored.state
    except Exception as e:  # orbax/tensorstore raise many kinds; any means unreadable
      moved.append(move_aside(manager, step))
      print(
        f"warning: checkpoint step {step} in {manager.directory} is unreadable "
        f"({_first_line(e)}); moved aside to {moved[-1]}",
        file=sys.stderr,
        flush=True,
      )
  raise CheckpointError(
    f"no checkpoint in {manager.directory} reads completely (moved aside: "
    f"{', '.join(moved)}); start afresh in a new --workdir"
  )


def move_aside(manager, step: int) -> str:
  """Renames checkpoint ``step`` to ``<workdir>/unreadable_checkpoints/<step>-<time>``."""
  root = os.path.join(os.path.dirname(str(manager.directory)), "unreadable_checkpoints")
  os.makedirs(root, exist_ok=True)
  stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
  aside = os.path.join(root, f"{step}-{stamp}")
  os.rename(os.path.join(str(manager.directory), str(step)), aside)
  manager.reload()
  return aside


def wait(manager):
  """Waits for the checkpoint being written; a failed write becomes a ``CheckpointError``."""
  try:
    manager.wait_until_finished()
  except Exception as e:
    raise _write_error(manager, e) from e


def close(manager):
  """Finishes in-flight writes and closes the manager at the end of a run. Called on every
  exit path, also after an error, so a write failure here is reported, not raised again."""
  try:
    manager.wait_until_finished()
  except Exception as e:
    print(f"warning: {_write_error(manager, e)}", file=sys.stderr, flush=True)
  manager.close()


def _write_error(manager, e: BaseException) -> CheckpointError:
  manager.reload()  # what is on disk: the failed step never got its final name
  return CheckpointError(
    f"could not write a checkpoint in {manager.directory} ({_first_line(e)}); the "
    f"checkpoints written before are intact (latest: step {manager.latest_step()}); "
    f"free space or fix permissions, then start the same command to resume"
  )


@jax.jit
def _all_finite(tree):
  return jnp.all(jnp.stack([jnp.isfinite(x).all() for x in jax.tree.leaves(tree)]))


def save(manager, step: int, state: dict, train_iter):
  """Saves ``state`` and the iterator position at ``step`` (asynchronously); refuses
  non-finite parameters, so the last checkpoint is always a good one."""
  if not bool(_all_finite(state["params"])):
    raise NonFiniteLoss(
      f"non-finite parameters after step {step}; stopping without saving them. The last "
      f"good checkpoint is step {manager.latest_step()} in {manager.directory}."
    )
  try:
    manager.save(
      step,
      force=True,
      args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=grain.checkpoint.CheckpointSave(train_iter)
      ),
    )
  except Exception as e:  # this save, or the previous one still in flight, failed
    raise _write_error(manager, e) from e


def fill(loaded, fresh):
  """``loaded`` with its ``None`` leaves (absent from a checkpoint) taken from ``fresh``."""
  return jax.tree.map(
    lambda new, old: old if new is None else new, loaded, fresh, is_leaf=lambda x: x is None
  )


def load_params(abstract_state: dict, workdir: str, step: int | None = None) -> dict:
  """Params and model state of a run's checkpoint, as NumPy, matched to ``abstract_state``.

  Returns ``{'params', 'model_state', 'step'}``: every parameter must exist with the same
  shape (else a ValueError naming it); model-state leaves present in both with equal shapes
  come from the checkpoint, the others (e.g. a new norm's statistics) are ``None`` (``fill``).
  Keys are matched by name, so a checkpoint's string keys meet the model's int keys; a
  checkpoint of the other transformer layout (``model.scan_layers``) is converted first.
  """
  manager = ocp.CheckpointManager(directory(workdir))
  step = manager.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(
      f"config key init_from.workdir={workdir!r}: no checkpoint found in "
      f"{manager.directory}; train that run first "
      f"(python -m normjax.train ... --workdir {workdir})"
    )
  path = os.path.join(manager.directory, str(step), "state")
  checkpointer = ocp.PyTreeCheckpointer()
  metadata = checkpointer.metadata(path).item_metadata.tree
  as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), metadata)
  saved = checkpointer.restore(path, args=ocp.args.PyTreeRestore(restore_args=as_numpy))

  def by_name(tree):
    return {path_names(p): x for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}

  # a scanned stack's checkpoint into an unrolled model or back (normjax.models.layer_stack)
  saved_params = by_name(stack_layout.match_layout(saved["params"], abstract_state["params"]))
  saved_state = by_name(
    stack_layout.match_layout(saved.get("model_state", {}), abstract_state["model_state"])
  )

  def take_param(path, x):
    v = saved_params.get(path_names(path))
    if v is None or v.shape != x.shape:
      raise ValueError(
        f"config key init_from.workdir={workdir!r}: parameter {'/'.join(path_names(path))} "
        f"{'is missing' if v is None else f'has shape {v.shape}, not {x.shape}'} in the "
        f"checkpoint; the model config must match the pretrained run's"
      )
    return v

  def take_state(path, x):
    v = saved_state.get(path_names(path))
    return v if v is not None and v.shape == x.shape else None

  params = jax.tree_util.tree_map_with_path(take_param, abstract_state["params"])
  model_state = jax.tree_util.tree_map_with_path(take_state, abstract_state["model_state"])
  return {"params": params, "model_state": model_state, "step": step}


def load_hf_params(abstract_state: dict, model_config, path: str) -> dict:
  """``load_params`` for ``config.init_from.hf``: the Hugging Face GPT-2 at ``path`` as the
  parameters of ``config.model`` (``normjax.interop.hf.pretrained_params``: LayerNorm/FakeLN as
  they are, RMSNorm/CRMSNorm by the exact conversion). A checkpoint has no norm state: the
  model state is all ``None`` (fresh). Every parameter must exist with the same shape, and
  every checkpoint parameter must be used. A scanned model (``model.scan_layers``) gets the
  blocks stacked."""
  from normjax.interop import hf

  model = model_config.to_dict() if hasattr(model_config, "to_dict") else dict(model_config)
  saved = stack_layout.match_layout(hf.pretrained_params(path, model), abstract_state["params"])
  names = {path_names(p): x for p, x in jax.tree_util.tree_flatten_with_path(saved)[0]}
  key = f"init_from.hf={path!r}"

  def take_param(p, x):
    v = names.pop(path_names(p), None)
    if v is None or v.shape != x.shape:
      raise ValueError(
        f"config key {key}: parameter {'/'.join(path_names(p))} "
        f"{'is missing' if v is None else f'has shape {v.shape}, not {x.shape}'} in the "
        f"checkpoint; the model config must match it (configs' hf=PATH argument reads it)"
      )
    return v

  params = jax.tree_util.tree_map_with_path(take_param, abstract_state["params"])
  if names:
    raise ValueError(
      f"config key {key}: checkpoint parameters {['/'.join(n) for n in sorted(names)][:3]} "
      f"have no place in the model; the model config must match the checkpoint"
    )
  model_state = jax.tree.map(lambda _: None, abstract_state["model_state"])
  return {"params": params, "model_state": model_state, "step": 0}


def read_config(workdir: str) -> ml_collections.ConfigDict:
  """The resolved config a run was started with (its ``config.json``)."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found: {workdir!r} is not a normjax.train workdir")
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def load_run(
  workdir: str, step: int | None = None, *, data=None, config=None
) -> tuple[ml_collections.ConfigDict, nnx.Module]:
  """``(config, model)``: a run's config and its eval-mode model at ``step`` (latest).

  ``data`` evaluates the model on another data config (the model's data-determined
  arguments come from it); ``config`` replaces the run's own (e.g. the same run with its
  norm swapped for a compatible one, as ``normjax.tools.alpha_bn_eval`` does).
  """
  config = read_config(workdir) if config is None else config
  setup = run.build(config, data=data, validate=False)
  params, model_state = split(setup.make(rngs=nnx.Rngs(0)))
  stored = setup.storage.init(params)  # the checkpoint's form of the weights (quantized?)
  loaded = load_params({"params": stored, "model_state": model_state}, workdir, step)
  model_state = fill(loaded["model_state"], model_state)
  params = setup.storage.decode(loaded["params"])
  return config, setup.model_def.merge(params, model_state, train=False)
