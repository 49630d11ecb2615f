r"""LayerNorm removal: the before/after report of a ``configs/gpt2_ln_removal.py`` run.

  python -m normjax.train --config configs/gpt2_layernorm.py --workdir /tmp/gpt2_ln
  python -m normjax.train --config configs/gpt2_ln_removal.py:init=/tmp/gpt2_ln \
      --workdir /tmp/gpt2_noln
  python -m normjax.tools.ln_removal /tmp/gpt2_noln [--control /tmp/gpt2_ln_ft]

The fine-tuning itself is an ordinary trainer run: GPT-2 with ``norm='fakeln'`` (the removal
schedule and aux-loss weight in ``norm_kwargs``, ``normjax.norms.fakeln``) initialised from the
LayerNorm run by ``config.init_from``. This script evaluates, on the removal run's eval split:

* the pretrained LayerNorm model (the loss before removal): ``init_from.workdir``'s run or
  ``init_from.hf``'s Hugging Face GPT-2,
* the fine-tuned model with its FakeLNs (the loss after removal),
* that model with every FakeLN folded into the adjacent linear layer (``fold_norms``): a GPT-2
  with no normalization at all. It fails if any FakeLN path is still live, and its loss equals
  the previous line up to float32 rounding,
* optionally a control run: the same fine-tuning with LayerNorm kept (``...:remove=False``),
  the baseline the papers compare with (same steps, same data).

It prints a table and writes ``ln_removal.json`` into the run's workdir.
"""

from __future__ import annotations

import json
import os

from flax import nnx

from normjax import cli, run
from normjax import data as nj_data
from normjax.checkpoint import load_run, read_config
from normjax.norms.fakeln import FakeLN
from normjax.surgery.folding import fold_norms
from normjax.tasks import TASKS


def eval_loss(model: nnx.Module, data_config, batch_size: int) -> float:
  """Mean eval loss (per token for LM data) of ``model`` over the eval split."""
  task = TASKS.get(nj_data.get_info(data_config).task)
  sums = run.model_sums(model, task)
  return run.evaluate(sums, data_config, batch_size=batch_size, task=task)["eval_loss"]


def fakeln_status(model: nnx.Module) -> list[dict]:
  """One row per FakeLN path: where it is, its freeze step, whether it is frozen, its std."""
  rows = []
  for path, node in nnx.iter_graph(model):
    if isinstance(node, FakeLN):
      name = "/".join(map(str, path))
      paths = [("main", False)] + ([("v", True)] if node.separate_value_path else [])
      for label, value_path in paths:
        rows.append(
          {
            "norm": name,
            "path": label,
            "step": int(node.step[...]),
            "freeze_step": node.value_freeze_step if value_path else node.freeze_step,
            "frozen": bool(node.is_frozen(value_path)),
            "std": float(node.frozen_std(value_path)),
          }
        )
  return rows


def report(workdir: str, control: str | None = None) -> dict:
  """Evaluates the runs described in the module docstring; returns (and saves) the numbers."""
  config = read_config(workdir)
  source = config.get("init_from") or {}
  if not (source.get("workdir") or source.get("hf")):
    raise ValueError(
      f"{workdir}: config.init_from.workdir (or .hf) is not set; this report compares a "
      f"removal run with the LayerNorm model it was initialised from"
    )
  batch = config.get("eval_batch_size", config.batch_size)
  result = {"eval_split": nj_data.get_info(config.data).eval_split}
  if source.get("workdir"):
    pretrained = load_run(source.workdir, data=config.data)[1]
  else:  # a Hugging Face GPT-2 (normjax.interop.hf)
    from normjax.interop import hf

    pretrained = hf.load_gpt2(source.hf)
  result["before"] = eval_loss(pretrained, config.data, batch)
  removed = load_run(workdir)[1]
  status = fakeln_status(removed)
  result["after"] = eval_loss(removed, config.data, batch)
  result["live_paths"] = [f"{r['norm']}[{r['path']}]" for r in status if not r["frozen"]]
  if status and not result["live_paths"]:
    result["norm_free"] = eval_loss(fold_norms(removed), config.data, batch)
  if control:
    result["control"] = eval_loss(load_run(control, data=config.data)[1], config.data, batch)
  result["fakeln"] = status
  with open(os.path.join(workdir, "ln_removal.json"), "w") as f:
    json.dump(result, f, indent=2)
  return result


def format_report(result: dict) -> str:
  lines = [
    f"LayerNorm removal, eval loss on the {result['eval_split']} split:",
    f"  pretrained, LayerNorm                 {result['before']:.4f}",
    f"  after removal (FakeLN, frozen)        {result['after']:.4f}  "
    f"({result['after'] - result['before']:+.4f})",
  ]
  if "norm_free" in result:
    lines.append(
      f"  same model, FakeLNs folded away       {result['norm_free']:.4f}  (no normalization left)"
    )
  if "control" in result:
    lines.append(
      f"  control: fine-tuned with LayerNorm    {result['control']:.4f}  "
      f"(removal costs {result['after'] - result['control']:+.4f})"
    )
  if result["live_paths"]:
    lines.append(f"  still live (not yet frozen): {', '.join(result['live_paths'])}")
  return "\n".join(lines)


def main():
  from absl import app, flags, logging

  control = flags.DEFINE_string("control", None, "Workdir of the LayerNorm-kept fine-tuning run.")
  verbose = cli.define_verbose_flag()

  def run_command(argv):
    if len(argv) != 2:
      raise app.UsageError("usage: python -m normjax.tools.ln_removal WORKDIR [--control WORKDIR]")
    logging.set_verbosity(logging.WARNING)  # orbax's info lines
    cli.guarded(
      "normjax.tools.ln_removal",
      lambda: print(format_report(report(argv[1], control.value))),
      verbose_flag=verbose.value,
    )

  app.run(run_command)


if __name__ == "__main__":
  main()
