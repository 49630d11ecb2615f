r"""Plan a run before renting it: compile the training step for a mesh, train nothing.

  XLA_FLAGS=--xla_force_host_platform_device_count=64 JAX_PLATFORMS=cpu \
      python -m normjax.train --config configs/gpt2_layernorm.py:data=tokens,path=DIR \
      --config.mesh.fsdp=64 --config.sharding=fsdp --dry_run

``plan(config)`` builds the run exactly as ``normjax.train`` does (``run.build``, the mesh,
the state sharding rule), lowers and compiles the jitted, donated train step against
abstract arrays of the global batch (one real batch is read for its shapes), and reports
per device: the bytes of parameters and optimizer state under the sharding rule, XLA's
memory analysis of the compiled step (arguments, outputs, temporaries = activations and
workspace, generated code), FLOPs per step (``normjax.hardware``) and the collectives the
sharding implies. On virtual CPU devices the figures are XLA:CPU's: the layouts, fusions
and temporaries of a GPU or TPU compile differ, so read them as the order of magnitude.
"""

from __future__ import annotations

import math
import time

import jax
import numpy as np

from normjax import data as nj_data
from normjax import hardware, run, sharding


def _per_device_bytes(abstract, shardings) -> int:
  def size(a, s):
    return math.prod(s.shard_shape(a.shape)) * np.dtype(a.dtype).itemsize

  return int(sum(jax.tree.leaves(jax.tree.map(size, abstract, shardings))))


def plan(config) -> dict:
  """Compiles ``config``'s train step for its mesh; returns the figures described above."""
  setup = run.build(config)
  mesh = sharding.make_mesh(config.get("mesh", {}))
  abstract = jax.eval_shape(setup.init_state, jax.random.key(config.seed))
  state_sharding = sharding.state_sharding(abstract, mesh, config.get("sharding", "data"))
  state_spec = sharding.sharded_specs(abstract, state_sharding)
  sample = next(
    nj_data.train_iterator(config.data, global_batch_size=config.batch_size, seed=config.seed)
  )
  batch_spec = jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding.batch_sharding(mesh)), sample
  )
  with jax.set_mesh(mesh):
    start = time.perf_counter()
    lowered = jax.jit(
      setup.train_step, donate_argnums=(0,), out_shardings=(state_sharding, None)
    ).lower(state_spec, batch_spec)
    traced = time.perf_counter()
    compiled = lowered.compile()
    done = time.perf_counter()
  memory = compiled.memory_analysis()
  n_params = sum(x.size for x in jax.tree.leaves(abstract["params"]))
  return {
    "model": config.model.name,
    "parameters": int(n_params),
    "devices": jax.device_count(),
    "mesh": dict(mesh.shape),
    "sharding": config.get("sharding", "data"),
    "global_batch": config.batch_size,
    "grad_accum_steps": setup.grad_accum_steps,
    "params_bytes": _per_device_bytes(abstract["params"], state_sharding["params"]),
    "opt_state_bytes": _per_device_bytes(abstract["opt_state"], state_sharding["opt_state"]),
    "argument_bytes": int(memory.argument_size_in_bytes),
    "output_bytes": int(memory.output_size_in_bytes),
    "alias_bytes": int(memory.alias_size_in_bytes),
    "temp_bytes": int(memory.temp_size_in_bytes),
    "code_bytes": int(memory.generated_code_size_in_bytes),
    "flops_per_step": hardware.step_flops(compiled),
    "collectives": hardware.collectives(compiled.as_text()),
    "trace_seconds": traced - start,  # tracing + lowering to StableHLO
    "compile_seconds": done - traced,  # XLA's compile
  }


def _gib(n: int) -> str:
  return f"{n / 2**30:8.3f} GiB"


def format_plan(p: dict) -> str:
  peak = (
    p["argument_bytes"] + p["output_bytes"] - p["alias_bytes"] + p["temp_bytes"] + p["code_bytes"]
  )
  lines = [
    f"{p['model']}: {p['parameters']:,} parameters on {p['devices']} devices, mesh "
    f"{p['mesh']}, sharding {p['sharding']!r}, global batch {p['global_batch']} "
    f"({p['grad_accum_steps']} micro-batches)",
    "per device:",
    f"  parameters            {_gib(p['params_bytes'])}",
    f"  optimizer state       {_gib(p['opt_state_bytes'])}",
    f"  step arguments        {_gib(p['argument_bytes'])}  (state + batch)",
    f"  step outputs          {_gib(p['output_bytes'])}  ({_gib(p['alias_bytes']).strip()} "
    f"donated back into the arguments)",
    f"  temporaries           {_gib(p['temp_bytes'])}  (activations, gradients, workspace)",
    f"  peak (estimate)       {_gib(peak)}",
    f"  FLOPs per step        {p['flops_per_step'] or 0:.3e}",
  ]
  if p["collectives"]:
    lines.append(
      "  collectives per step "
      + ", ".join(
        f"{op} x{v['count']} ({v['bytes'] / 2**20:.1f} MiB)" for op, v in p["collectives"].items()
      )
    )
  else:
    lines.append("  collectives per step none")
  lines.append(
    f"compile: trace + lower {p['trace_seconds']:.1f} s, XLA compile {p['compile_seconds']:.1f} s"
  )
  return "\n".join(lines)
