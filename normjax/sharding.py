"""Mesh and sharding rules.

The mesh has two axes, ``('data', 'fsdp')``; ``config.mesh = {'data': -1, 'fsdp': 1}``
by default (-1: every remaining device). Batches are split over both axes. The state
sharding rule ``config.sharding`` is

* ``'data'``: every state leaf replicated (data-parallel);
* ``'fsdp'``: each leaf of at least ``FSDP_MIN_SIZE`` elements is split over ``'fsdp'``
  along its largest dimension divisible by the axis size (big_vision's ``fsdp`` rule,
  re-written); smaller leaves stay replicated. Optimizer moments have their parameter's
  shape, so they follow the same layout.

``initialize_distributed`` starts ``jax.distributed`` for a multi-process run (explicit
flags, or a cluster environment: SLURM, TPU pods, ``JAX_COORDINATOR_ADDRESS``).
"""

from __future__ import annotations

import os
import sys

import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from normjax.optim.labels import path_names
from normjax.stack_layout import is_stacked_path

AXES = ("data", "fsdp")
RULES = ("data", "fsdp")
FSDP_MIN_SIZE = 2**14


def mesh_shape(mesh_cfg, n_devices: int) -> tuple[int, int]:
  sizes = [int(mesh_cfg.get(a, -1 if a == "data" else 1)) for a in AXES]
  if sizes.count(-1) > 1:
    raise ValueError(f"config key mesh={dict(mesh_cfg)}: at most one axis may be -1")
  known = int(np.prod([s for s in sizes if s != -1]))
  if -1 in sizes:
    if n_devices % known:
      raise ValueError(
        f"config key mesh={dict(mesh_cfg)}: {n_devices} devices are not divisible by {known}"
      )
    sizes[sizes.index(-1)] = n_devices // known
  if int(np.prod(sizes)) != n_devices:
    raise ValueError(
      f"config key mesh={dict(mesh_cfg)}: needs {int(np.prod(sizes))} devices, "
      f"{n_devices} available"
    )
  return tuple(sizes)


def make_mesh(mesh_cfg) -> jax.sharding.Mesh:
  shape = mesh_shape(mesh_cfg, jax.device_count())
  return jax.make_mesh(shape, AXES, axis_types=(AxisType.Auto,) * len(AXES))


def batch_sharding(mesh) -> NamedSharding:
  return NamedSharding(mesh, P(AXES))


def _leaf_spec(x, fsdp_size: int, stacked: bool = False) -> P:
  """FSDP: the largest axis the fsdp size divides; never the depth axis of a scanned stack
  (``stacked``: the scan slices it, so sharding it would gather every layer each step)."""
  if fsdp_size == 1 or x.ndim == 0 or x.size < FSDP_MIN_SIZE:
    return P()
  skip = 1 if stacked else 0
  for dim in np.argsort(x.shape[skip:])[::-1] + skip:
    if x.shape[dim] % fsdp_size == 0:
      spec = [None] * x.ndim
      spec[dim] = "fsdp"
      return P(*spec)
  return P()


def state_sharding(abstract_state, mesh, rule: str):
  if rule not in RULES:
    raise ValueError(f"config key sharding={rule!r}: valid choices are {RULES}")
  fsdp = mesh.shape["fsdp"] if rule == "fsdp" else 1
  return jax.tree_util.tree_map_with_path(
    lambda p, x: NamedSharding(mesh, _leaf_spec(x, fsdp, is_stacked_path(path_names(p)))),
    abstract_state,
  )


def sharded_specs(abstract_state, shardings):
  """``ShapeDtypeStruct``s of ``abstract_state`` carrying ``shardings``: the target of a
  sharded restore or of an ahead-of-time ``lower``."""
  return jax.tree.map(
    lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_state, shardings
  )


def initialize_distributed(coordinator, num_processes, process_id):
  """Initializes jax.distributed for multi-process runs; a no-op for a single process."""
  if num_processes and num_processes > 1:
    # Cross-process collectives for CPU devices; GPU/TPU clients ignore this setting.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator, num_processes, process_id)
  elif any(
    k in os.environ for k in ("JAX_COORDINATOR_ADDRESS", "SLURM_NTASKS", "TPU_WORKER_HOSTNAMES")
  ):
    try:
      jax.distributed.initialize()
    except (ValueError, RuntimeError) as e:  # a single-host TPU VM or one SLURM task
      print(f"jax.distributed not initialized ({e}); running single-process", file=sys.stderr)
