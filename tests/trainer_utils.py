"""Helpers for trainer tests: load configs, shrink them, run the CLI, read checkpoints."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp

from normjax import data as nj_data
from normjax import run
from normjax.config_args import sibling_config

ROOT = Path(__file__).resolve().parents[1]


def load_config(name: str, arg: str | None = None):
  return sibling_config(str(ROOT / "configs" / "x.py"), name, arg)


# Overrides that make each foundation config a seconds-long run (same code paths).
TINY = {
  "vit": {
    "model.width": 32,
    "model.depth": 1,
    "model.num_heads": 2,
    "model.mlp_dim": 32,
    "batch_size": 32,
    "eval_batch_size": 64,
  },
  "resnet": {
    "model.width": 8,
    "model.stage_sizes": (1, 1),
    "batch_size": 32,
    "eval_batch_size": 64,
  },
  "gpt2": {
    "model.width": 32,
    "model.depth": 1,
    "model.num_heads": 2,
    "batch_size": 8,
    "eval_batch_size": 16,
    "data.seq_len": 32,
    "data.eval_windows": 32,
  },
}


def overrides(model: str, steps: int, **extra) -> dict:
  return {
    **TINY[model],
    "total_steps": steps,
    "schedule.warmup_steps": 1,
    "log_every": 1,
    "checkpoint_every": steps,
    **extra,
  }


def apply(config, values: dict):
  for key, value in values.items():
    *parents, leaf = key.split(".")
    node = config
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


def train_steps(name, arg=None, steps=3, **overrides):
  """(config, initial state, final state, per-step metrics) of ``steps`` train steps on one
  device with the config's own batch size, model, optimizer and task."""
  config = apply(load_config(name, arg), overrides)
  # (micro-batch configs have fewer rows than the 8 test devices: resolve without the check)
  validate = config.batch_size % jax.device_count() == 0
  setup = run.build(config, validate=validate, total_steps=100)
  initial = jax.jit(setup.init_state)(jax.random.key(config.seed))
  train_step = jax.jit(setup.train_step)
  batches = nj_data.train_iterator(config.data, global_batch_size=config.batch_size, seed=0)
  state, metrics = initial, []
  for _ in range(steps):
    state, m = train_step(state, next(batches))
    metrics.append(jax.device_get(m))
  return config, initial, state, metrics


def cli_args(name: str, values: dict) -> list[str]:
  args = [sys.executable, "-m", "normjax.train", "--config", str(ROOT / "configs" / f"{name}.py")]
  for key, value in values.items():
    if isinstance(value, tuple):
      value = "(" + ",".join(map(str, value)) + ",)"
    args.append(f"--config.{key}={value}")
  return args


def env(devices: int = 1, **extra) -> dict:
  e = dict(
    os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}"
  )
  e.update(extra)
  return e


def checkpoint_steps(workdir) -> list[int]:
  d = Path(workdir) / "checkpoints"
  return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.exists() else []


def wait_for_checkpoint(proc, workdir, timeout=300.0) -> int:
  start = time.time()
  while time.time() - start < timeout:
    steps = checkpoint_steps(workdir)
    if steps:
      return steps[-1]
    if proc.poll() is not None:
      raise AssertionError(f"trainer exited early:\n{proc.stdout.read()}")
    time.sleep(0.02)
  raise AssertionError("no checkpoint appeared")


def restore_state(workdir, step: int | None = None) -> dict:
  step = checkpoint_steps(workdir)[-1] if step is None else step
  path = Path(workdir).resolve() / "checkpoints" / str(step) / "state"
  checkpointer = ocp.PyTreeCheckpointer()
  metadata = checkpointer.metadata(path).item_metadata.tree
  as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), metadata)
  return checkpointer.restore(path, args=ocp.args.PyTreeRestore(restore_args=as_numpy))


def leaves(tree) -> list[np.ndarray]:
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


def run_cli(args, env_vars, timeout=600) -> subprocess.CompletedProcess:
  return subprocess.run(
    args, env=env_vars, cwd=ROOT, capture_output=True, text=True, timeout=timeout
  )
