r"""A run's latest checkpoint in the other transformer layout: scanned <-> unrolled blocks.

  python -m normjax.tools.relayout --workdir W --out W2 [--scan_layers=true|false]
  python -m normjax.train --config ... --config.model.scan_layers=true --workdir W2   # resumes

``model.scan_layers`` (``normjax.models.layer_stack``) changes where a transformer's block
weights live (``blocks/<i>/...`` or ``blocks/...`` with a leading depth axis), so a run cannot
switch in place (its workdir refuses the changed key). This tool restores W's newest readable
checkpoint, converts the parameters and the model state (running statistics, backward
statistics, dropout streams) and the optimizer state (stacked for AdamW / SGD, which run on
the stacked leaves; unrolled in both layouts for the others, ``layer_stack.unrolled_view``)
to the other layout, and writes them as W2's checkpoint at the same step with the same data
position, with W's config and
``model.scan_layers`` set (default: flipped). Resuming W2 continues W's run: its losses
equal W's to float32 rounding (tested). W's ``metrics.jsonl`` up to that step is copied,
so the curves continue.
``config.init_from.workdir`` reads either layout already (weights only, fresh optimizer).
"""

from __future__ import annotations

import os

import jax


def _copy_metrics(workdir: str, out: str, step: int) -> None:
  """W's ``metrics.jsonl`` rows up to the checkpoint's step (the resumed run logs the rest)."""
  import json

  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return
  with open(path) as f, open(os.path.join(out, "metrics.jsonl"), "w") as g:
    for line in f:
      if line.strip() and json.loads(line).get("step", 0) <= step:
        g.write(line)


def relayout(workdir: str, out: str, scan_layers: bool | None = None) -> dict:
  """Writes W's latest checkpoint into ``out`` in the other layout; returns a summary."""
  import normjax.workdir as workdirs
  from normjax import checkpoint, run, sharding, stack_layout
  from normjax import data as nj_data

  src = checkpoint.read_config(workdir)
  if src.model.name not in ("gpt2", "vit"):
    raise ValueError(f"{workdir}: model {src.model.name!r} has no transformer stack to relayout")
  now = bool(src.model.get("scan_layers", False))
  target = (not now) if scan_layers is None else bool(scan_layers)
  if target == now:
    raise ValueError(f"{workdir} already has model.scan_layers={now}; nothing to convert")
  if workdirs.has_checkpoints(out):
    raise workdirs.WorkdirError(f"{out} already holds a run; choose a new --out")
  dst = src.copy_and_resolve_references()
  with dst.unlocked():
    dst.model.scan_layers = target
  src_setup, dst_setup = run.build(src, validate=False), run.build(dst)
  mesh = sharding.make_mesh(dst.get("mesh", {}))
  with jax.set_mesh(mesh):
    train_iter = nj_data.train_iterator(src.data, global_batch_size=src.batch_size, seed=src.seed)
    key = jax.random.key(src.seed)
    src_abstract = jax.eval_shape(src_setup.init_state, key)
    src_sharding = sharding.state_sharding(src_abstract, mesh, src.sharding)
    target = checkpoint.ocp.args.StandardRestore(sharding.sharded_specs(src_abstract, src_sharding))
    reader = checkpoint.make_manager(workdir, src.keep_checkpoints)
    try:
      step, state = checkpoint.restore_latest_readable(reader, target, train_iter)
    finally:
      checkpoint.close(reader)
    dst_abstract = jax.eval_shape(dst_setup.init_state, key)
    state = jax.device_get(state)
    state = {
      **state,
      "params": stack_layout.match_layout(state["params"], dst_abstract["params"]),
      "model_state": stack_layout.match_layout(state["model_state"], dst_abstract["model_state"]),
      "opt_state": stack_layout.match_layout_all(state["opt_state"], dst_abstract["opt_state"]),
    }
    if jax.tree.structure(state) != jax.tree.structure(dst_abstract):
      raise ValueError(f"{workdir}: the converted state does not match the target model's")
    dst_sharding = sharding.state_sharding(dst_abstract, mesh, dst.sharding)
    state = jax.device_put(state, dst_sharding)
    with workdirs.lock(out):
      writer = checkpoint.make_manager(out, dst.keep_checkpoints)
      try:
        checkpoint.save(writer, step, state, train_iter)
        checkpoint.wait(writer)
      finally:
        checkpoint.close(writer)
      workdirs.record_start(out, dst, step, {})
      _copy_metrics(workdir, out, step)
  return {"workdir": workdir, "out": out, "step": step, "scan_layers": target}


def main():
  from absl import app, flags, logging

  from normjax import cli

  workdir = flags.DEFINE_string("workdir", None, "The run to convert.")
  out = flags.DEFINE_string("out", None, "Where to write the converted run.")
  scan = flags.DEFINE_bool("scan_layers", None, "The target layout (default: the other one).")
  verbose = cli.define_verbose_flag()

  def run_command(argv):
    del argv
    if not (workdir.value and out.value):
      raise app.UsageError("usage: python -m normjax.tools.relayout --workdir W --out W2")
    logging.set_verbosity(logging.WARNING)

    def body():
      r = relayout(workdir.value, out.value, scan.value)
      print(
        f"wrote {r['out']}: {r['workdir']} at step {r['step']} with model.scan_layers="
        f"{r['scan_layers']}; resume it with normjax.train --config ... "
        f"--config.model.scan_layers={r['scan_layers']} --workdir {r['out']}"
      )

    cli.guarded("normjax.tools.relayout", body, verbose_flag=verbose.value)

  app.run(run_command)


if __name__ == "__main__":
  main()
