r"""The normjax trainer: one config in, a trained model, metrics and checkpoints out.

  python -m normjax.train --config configs/vit_layernorm.py[:ARG] \
      [--config.key=value ...] [--workdir DIR]

One readable ``main()`` in the spirit of big_vision's train.py: config -> mesh -> data ->
model and optimizer -> state built on device (``jax.eval_shape`` + ``jax.jit(...,
out_shardings=...)``) -> jitted, donated update step -> loop with eval, checkpoints and
metrics. Research variants fork a config, not this file.

Workdir layout: ``config.json`` (resolved config), ``metrics.jsonl`` (one JSON object per
logged step), ``tb/`` (TensorBoard events), ``checkpoints/`` (orbax: train state + data
iterator). A run restarted with the same workdir resumes from its latest checkpoint.

Multi-host: launch the same command on every host. ``jax.distributed.initialize()`` is
called when ``--num_processes`` > 1 (with ``--coordinator_address``/``--process_id``) or
when the environment describes a cluster (TPU pod, SLURM, ``JAX_COORDINATOR_ADDRESS``).
"""
from __future__ import annotations

import functools
import json
import os
import signal
import sys
import time

from absl import app, flags, logging
import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import nnx
from ml_collections import config_flags

from normjax import data as nj_data
from normjax import metrics_io, sharding
from normjax.config_check import check_config, model_kwargs
from normjax.models import MODELS
from normjax.norms.backward_state import value_and_grad_with_backward_state
from normjax.optim.build import make_optimizer
from normjax.tasks import TASKS, loss_and_sums
from normjax.state import ModelDef, load_pretrained, pop_aux_loss, split

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file [:arg].", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output dir (default: ./workdirs/<config name>).")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in a multi-host run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")


class NonFiniteLoss(RuntimeError):
  pass


def _maybe_initialize_distributed():
  """Initializes jax.distributed for multi-process runs; a no-op for a single process."""
  if _NUM_PROCESSES.value and _NUM_PROCESSES.value > 1:
    # Cross-process collectives for CPU devices; GPU/TPU clients ignore this setting.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  elif any(k in os.environ for k in ("JAX_COORDINATOR_ADDRESS", "SLURM_NTASKS", "TPU_WORKER_HOSTNAMES")):
    try:
      jax.distributed.initialize()
    except (ValueError, RuntimeError) as e:  # a single-host TPU VM or one SLURM task
      print(f"jax.distributed not initialized ({e}); running single-process", file=sys.stderr)


def make_init(make, tx):
  """``init_state(key)``: a freshly initialized model and optimizer as one pytree."""
  def init_state(key):
    params, model_state = split(make(rngs=nnx.Rngs(key)))
    return {"step": jnp.zeros((), jnp.int32), "params": params,
            "model_state": model_state, "opt_state": tx.init(params)}
  return init_state


def make_steps(model_def: ModelDef, tx, schedule, task_name: str):
  """The (un-jitted) ``train_step(state, batch)`` and ``eval_step(state, batch)``."""
  task = TASKS.get(task_name)

  def train_step(state, batch):
    def loss_fn(params, model_state):
      model = model_def.merge(params, model_state, train=True)
      loss, sums = loss_and_sums(task, model(task.inputs(batch)), batch)
      sums["aux_loss"] = pop_aux_loss(model)
      return loss + sums["aux_loss"], (split(model)[1], sums)
    (_, sums), grads, model_state = value_and_grad_with_backward_state(
        loss_fn, state["params"], state["model_state"], model_def.grad_stat_mask)
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    new_state = {"step": state["step"] + 1, "params": optax.apply_updates(state["params"], updates),
                 "model_state": model_state, "opt_state": opt_state}
    metrics = {"loss": sums["loss"] / sums["count"], task.metric: sums[task.metric] / sums["count"],
               "grad_norm": optax.global_norm(grads), "learning_rate": schedule(state["step"])}
    if model_def.has_aux_loss:
      metrics["aux_loss"] = sums["aux_loss"]
    return new_state, metrics

  def eval_step(state, batch):
    model = model_def.merge(state["params"], state["model_state"], train=False)
    return loss_and_sums(task, model(task.inputs(batch)), batch)[1]

  return train_step, eval_step


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains ``config`` in ``workdir`` (resuming if it holds a checkpoint); returns final metrics."""
  # ------------------------------------------------------------------- set-up
  info = nj_data.get_info(config.data)
  total_steps = check_config(config, info)  # fails fast, before anything compiles
  is_main = jax.process_index() == 0
  writer = metrics_io.MetricWriter(workdir, enabled=is_main)
  writer.write_config(config)

  # --------------------------------------------------------------------- mesh
  mesh = sharding.make_mesh(config.get("mesh", {}))
  batch_sharding = sharding.batch_sharding(mesh)

  # --------------------------------------------------------------------- data
  train_iter = nj_data.train_iterator(
      config.data, global_batch_size=config.batch_size, seed=config.seed,
      process_index=jax.process_index(), process_count=jax.process_count())
  def to_device(batch):
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(batch_sharding, x), batch)

  # ------------------------------------------------------- model and optimizer
  kwargs = model_kwargs(config.model, info)
  make = functools.partial(MODELS.get(config.model.name), **kwargs)
  model_def = ModelDef.create(lambda rngs: make(rngs=rngs))
  tx, schedule = make_optimizer(config, total_steps)

  # --------------------------------------------------------- state on device
  init_state = make_init(make, tx)
  init_key = jax.random.key(config.seed)
  abstract_state = jax.eval_shape(init_state, init_key)
  state_sharding = sharding.state_sharding(abstract_state, mesh, config.get("sharding", "data"))
  with jax.set_mesh(mesh):
    state = jax.jit(init_state, out_shardings=state_sharding)(init_key)
  n_params = sum(x.size for x in jax.tree.leaves(state["params"]))
  print(f"{config.model.name} with norm={config.model.get('norm')}: {n_params:,} parameters; "
        f"{jax.device_count()} devices, mesh {dict(mesh.shape)}", flush=True)

  # -------------------------------------------------------------- update step
  train_step, eval_step = make_steps(model_def, tx, schedule, info.task)
  with jax.set_mesh(mesh):
    train_step = jax.jit(train_step, donate_argnums=(0,), out_shardings=(state_sharding, None))
    eval_step = jax.jit(eval_step)

  def evaluate(state):
    totals = None
    batches = nj_data.eval_iterator(
        config.data, global_batch_size=config.get("eval_batch_size", config.batch_size),
        process_index=jax.process_index(), process_count=jax.process_count())
    for batch in batches:
      with jax.set_mesh(mesh):
        sums = jax.device_get(eval_step(state, to_device(batch)))
      totals = {k: (totals[k] if totals else 0.0) + float(v) for k, v in sums.items()}
    out = {f"eval_{k}": v / totals["count"] for k, v in totals.items() if k != "count"}
    return {**out, **TASKS.get(info.task).derived(out)}

  # ------------------------------------------------------- checkpoint restore
  manager = ocp.CheckpointManager(
      os.path.abspath(os.path.join(workdir, "checkpoints")),
      options=ocp.CheckpointManagerOptions(
          max_to_keep=config.keep_checkpoints, enable_async_checkpointing=True, create=True))
  start = manager.latest_step() or 0
  if start:
    restored = manager.restore(start, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
            abstract_state, state_sharding)),
        data=grain.checkpoint.CheckpointRestore(train_iter)))
    state = restored.state
    print(f"resumed from {manager.directory} at step {start}", flush=True)
  elif config.get("init_from") and config.init_from.get("workdir"):
    pretrained = load_pretrained(abstract_state, config.init_from.workdir,
                                 config.init_from.get("step"))
    fresh = jax.device_get(state)
    model_state = jax.tree.map(lambda new, old: old if new is None else new,
                               pretrained["model_state"], fresh["model_state"],
                               is_leaf=lambda x: x is None)
    loaded = {**fresh, "params": pretrained["params"], "model_state": model_state,
              "opt_state": tx.init(pretrained["params"])}
    state = jax.device_put(loaded, state_sharding)
    print(f"initialized from {config.init_from.workdir} (step {pretrained['step']})", flush=True)

  all_finite = jax.jit(lambda tree: jnp.all(jnp.stack(
      [jnp.isfinite(x).all() for x in jax.tree.leaves(tree)])))

  def save(step, state):
    if not bool(all_finite(state["params"])):
      raise NonFiniteLoss(
          f"non-finite parameters after step {step}; stopping without saving them. The last "
          f"good checkpoint is step {manager.latest_step()} in {manager.directory}.")
    manager.save(step, force=True, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=grain.checkpoint.CheckpointSave(train_iter)))

  # ------------------------------------------------------------------ loop
  stop = {"signal": None}
  previous_handler = signal.signal(signal.SIGTERM, lambda signum, frame: stop.update(signal=signum))
  progress = metrics_io.Progress(total_steps, start, config.batch_size, enabled=is_main)
  pending = None  # (step, metrics) of the previous step: read one step late, no stall
  def check(step, metrics):
    metrics = jax.device_get(metrics)
    if not np.isfinite(metrics["loss"]):
      raise NonFiniteLoss(
          f"non-finite loss {metrics['loss']} at step {step}; stopping. The last good "
          f"checkpoint is step {manager.latest_step()} in {manager.directory}.")
    progress.update(step, metrics)
    if step % config.log_every == 0 or step == total_steps:
      writer.write(step, {**metrics, **progress.rates()})

  try:
    for step in range(start + 1, total_steps + 1):
      with jax.set_mesh(mesh):
        state, metrics = train_step(state, to_device(next(train_iter)))
      if pending:
        check(*pending)
      pending = (step, metrics)
      if step % config.checkpoint_every == 0 or step == total_steps or stop["signal"]:
        check(*pending)  # never checkpoint a state produced by a non-finite step
        pending = None
        save(step, state)
      if stop["signal"]:
        manager.wait_until_finished()
        print(f"\nsignal {stop['signal']} received: checkpoint written at step {step}; exiting.",
              flush=True)
        writer.close()
        return {"preempted_at_step": step}
      if config.eval_every and step % config.eval_every == 0 and step != total_steps:
        writer.write(step, evaluate(state))
    if pending:
      check(*pending)
  except NonFiniteLoss:
    manager.wait_until_finished()
    progress.close()
    writer.close()
    raise
  finally:
    signal.signal(signal.SIGTERM, previous_handler)
  progress.close()
  manager.wait_until_finished()

  # ----------------------------------------------------------- final evaluation
  final = evaluate(state)
  writer.write(total_steps, final)
  writer.write_final(total_steps, final)
  writer.close()
  print(TASKS.get(info.task).summary(final, info), flush=True)
  return final


def main(argv):
  del argv
  config = _CONFIG.value
  if config is None:
    raise app.UsageError("--config is required, e.g. --config configs/vit_layernorm.py")
  logging.set_verbosity(logging.WARNING)  # tfds/orbax info lines drown the progress bar
  _maybe_initialize_distributed()
  name = os.path.splitext(os.path.basename(config_flags.get_config_filename(flags.FLAGS["config"])))[0]
  try:
    train_and_evaluate(config, _WORKDIR.value or os.path.join("workdirs", name))
  except (NonFiniteLoss, ValueError, KeyError, FileNotFoundError) as e:
    raise SystemExit(f"normjax.train: {e}") from None


if __name__ == "__main__":
  app.run(main)
