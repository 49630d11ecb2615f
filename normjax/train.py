r"""The normjax trainer: one config in, a trained model, metrics and checkpoints out.

  python -m normjax.train --config configs/vit_layernorm.py[:ARG] \
      [--config.key=value ...] [--workdir DIR]

One readable function in the spirit of big_vision's train.py: config -> mesh -> data ->
set-up (``normjax.run.build``: model, optimizer, steps) -> state built on device
(``jax.eval_shape`` + ``jax.jit(..., out_shardings=...)``) -> jitted, donated update step ->
loop with eval, checkpoints (``normjax.checkpoint``) and metrics. Research variants fork a
config, not this file.

Workdir layout: ``config.json`` (resolved config), ``status.json`` (running, finished,
preempted, diverged or failed, with the message), ``metrics.jsonl`` (one JSON object per
logged step), ``tb/`` (TensorBoard events), ``checkpoints/`` (orbax: train state + data
iterator), ``final.json`` (the final evaluation). A run restarted with the same workdir
resumes from its latest checkpoint.

Multi-host: launch the same command on every host. ``jax.distributed.initialize()`` is
called when ``--num_processes`` > 1 (with ``--coordinator_address``/``--process_id``) or
when the environment describes a cluster (TPU pod, SLURM, ``JAX_COORDINATOR_ADDRESS``).
Importing this module defines no flags: they are defined when it runs as a command.
"""

from __future__ import annotations

import contextlib
import os
import signal

import jax
import numpy as np

import normjax.workdir as workdirs
from normjax import checkpoint, cli, hardware, metrics_io, plan, run, sharding
from normjax import data as nj_data
from normjax.checkpoint import NonFiniteLoss


def train_and_evaluate(config, workdir: str, *, restart: bool = False) -> dict:
  """Trains ``config`` in ``workdir`` (resuming if it holds a checkpoint); returns final metrics.

  A restart whose config differs from the run's beyond ``workdirs.RESUMABLE_KEYS`` is
  refused before anything is written, unless ``restart`` (the old run is moved aside).
  """
  setup = run.build(config)  # fails fast, before anything compiles
  is_main = jax.process_index() == 0
  amended = workdirs.prepare(workdir, config, restart=restart) if is_main else {}
  with contextlib.ExitStack() as stack:
    if is_main:  # one process owns the workdir
      stack.enter_context(workdirs.lock(workdir))
    writer = metrics_io.MetricWriter(workdir, enabled=is_main)
    stack.callback(writer.close)
    stack.enter_context(writer.status_on_exit(diverged=(NonFiniteLoss,)))

    # ------------------------------------------------------------------- mesh
    mesh = sharding.make_mesh(config.get("mesh", {}))
    batch_sharding = sharding.batch_sharding(mesh)
    stack.enter_context(jax.set_mesh(mesh))

    # ------------------------------------------------------------------- data
    train_iter = nj_data.train_iterator(
      config.data,
      global_batch_size=config.batch_size,
      seed=config.seed,
      process_index=jax.process_index(),
      process_count=jax.process_count(),
    )

    def to_device(batch):
      return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(batch_sharding, x), batch
      )

    # ------------------------------------------------------- state on device
    init_key = jax.random.key(config.seed)
    abstract_state = jax.eval_shape(setup.init_state, init_key)
    state_sharding = sharding.state_sharding(abstract_state, mesh, config.get("sharding", "data"))
    state = jax.jit(setup.init_state, out_shardings=state_sharding)(init_key)
    n_params = sum(  # shared modules (model.sharing) are stored, so counted, once
      x.size for x in jax.tree.leaves(jax.eval_shape(setup.storage.decode, state["params"]))
    )
    megabytes = lambda tree: sum(x.nbytes for x in jax.tree.leaves(tree)) / 2**20
    shared = config.model.get("sharing") or "none"  # normjax.models.sharing
    print(
      f"{config.model.name} with norm={config.model.get('norm')}: {n_params:,} parameters"
      + (f" (sharing={shared}: each shared module counted once)" if shared != "none" else "")
      + f" ({megabytes(state['params']):.2f} MiB), optimizer state "
      f"{megabytes(state['opt_state']):.2f} MiB; "
      f"{jax.device_count()} devices, mesh {dict(mesh.shape)}",
      flush=True,
    )

    manager = checkpoint.make_manager(workdir, config.keep_checkpoints)
    stack.callback(checkpoint.close, manager)
    state, start = checkpoint.restore_or_init(
      manager, setup, state, abstract_state, state_sharding, train_iter
    )
    if is_main:
      workdirs.record_start(workdir, config, start, amended)

    # ------------------------------------------------------------ update step
    # Compiled once, ahead of time, on the first batch: its cost analysis gives the FLOPs.
    total_steps = setup.total_steps
    first = to_device(next(train_iter)) if start < total_steps else None
    train_step = flops = None
    if first is not None:
      train_step = (
        jax.jit(setup.train_step, donate_argnums=(0,), out_shardings=(state_sharding, None))
        .lower(state, first)
        .compile()
      )
      flops = hardware.step_flops(train_step)
    eval_step = jax.jit(setup.eval_step)

    def evaluate(state):
      return run.evaluate(
        lambda batch: eval_step(state, to_device(batch)),
        config.data,
        batch_size=config.get("eval_batch_size", config.batch_size),
        task=setup.task,
      )

    # ------------------------------------------------------------------- loop
    stop = {"signal": None}
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: stop.update(signal=signum))
    stack.callback(signal.signal, signal.SIGTERM, previous)
    progress = metrics_io.Progress(total_steps, start, config.batch_size, enabled=is_main)
    stack.callback(progress.close)

    profile = metrics_io.Profile(config.get("profile") or {}, workdir, enabled=is_main)
    stack.callback(profile.stop)

    def check(step, metrics):
      metrics = jax.device_get(metrics)
      if not np.isfinite(metrics["loss"]):
        raise NonFiniteLoss(
          f"non-finite loss {metrics['loss']} at step {step}; stopping. The last good "
          f"checkpoint is step {manager.latest_step()} in {manager.directory}."
        )
      progress.update(step, metrics)
      if step % config.log_every == 0 or step == total_steps:
        rates = progress.rates()
        speed = hardware.speed(flops, rates["steps_per_sec"])  # flops_per_sec and mfu
        writer.write(step, {**metrics, **rates, **speed})

    pending = None  # (step, metrics) of the previous step: read one step late, no stall
    for step in range(start + 1, total_steps + 1):
      profile.before(step)
      batch = first if step == start + 1 else to_device(next(train_iter))
      state, metrics = train_step(state, batch)
      profile.after(step, metrics)
      if pending:
        check(*pending)
      pending = (step, metrics)
      if step % config.checkpoint_every == 0 or step == total_steps or stop["signal"]:
        check(*pending)  # never checkpoint a state produced by a non-finite step
        pending = None
        checkpoint.save(manager, step, state, train_iter)
      if stop["signal"]:
        checkpoint.wait(manager)
        print(
          f"\nsignal {stop['signal']} received: checkpoint written at step {step}; exiting.",
          flush=True,
        )
        writer.set_status("preempted", step=step)
        return {"preempted_at_step": step}
      if config.eval_every and step % config.eval_every == 0 and step != total_steps:
        writer.write(step, evaluate(state))
    if pending:
      check(*pending)
    checkpoint.wait(manager)

    # ------------------------------------------------------- final evaluation
    final = evaluate(state)
    writer.write(total_steps, final)
    writer.write_final(total_steps, final)
    writer.set_status("finished", step=total_steps)
    print(setup.task.summary(final, setup.info), flush=True)
    return final


def main():
  """The command line: flags are defined here, never at import."""
  from absl import app, flags, logging
  from ml_collections import config_flags

  config_flag = config_flags.DEFINE_config_file(
    "config", None, "Config file [:arg].", lock_config=True
  )
  workdir = flags.DEFINE_string("workdir", None, "Output dir (default: ./workdirs/<config>).")
  restart = flags.DEFINE_bool(
    "restart",
    False,
    "Move the run in --workdir aside and start "
    "afresh there (instead of refusing a changed config).",
  )
  dry_run = flags.DEFINE_bool(
    "dry_run",
    False,
    "Compile the step for the mesh and print "
    "per-device memory, FLOPs and collectives; train nothing.",
  )
  verbose = cli.define_verbose_flag()
  coordinator = flags.DEFINE_string("coordinator_address", None, "host:port of process 0.")
  num_processes = flags.DEFINE_integer("num_processes", None, "Processes in a multi-host run.")
  process_id = flags.DEFINE_integer("process_id", None, "This process's index.")

  def run_command(argv):
    del argv
    config = config_flag.value
    if config is None:
      raise app.UsageError("--config is required, e.g. --config configs/vit_layernorm.py")
    logging.set_verbosity(logging.WARNING)  # tfds/orbax info lines drown the progress bar
    filename = config_flags.get_config_filename(flags.FLAGS["config"])
    name = os.path.splitext(os.path.basename(filename))[0]

    def body():
      sharding.initialize_distributed(coordinator.value, num_processes.value, process_id.value)
      if dry_run.value:
        return print(plan.format_plan(plan.plan(config)))
      train_and_evaluate(
        config, workdir.value or os.path.join("workdirs", name), restart=restart.value
      )

    cli.guarded("normjax.train", body, verbose_flag=verbose.value)

  app.run(run_command)


if __name__ == "__main__":
  main()
