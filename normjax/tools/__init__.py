"""Commands built on the trainer, each ``python -m normjax.tools.<name>``:

* ``sweep``: a grid of training runs, run here, emitted for a scheduler, summarised;
* ``ln_removal``: the before/after report of a LayerNorm-removal run;
* ``alpha_bn_eval``: test-time alpha-BN of a trained BatchNorm model on corrupted images;
* ``continual``: online class-incremental learning with a replay buffer (ER / ER-ACE), the
  home of AdaB²N's experiment (its own loop: a task stream is not the trainer's i.i.d. step).

The first three load runs through ``normjax.checkpoint.load_run`` and evaluate through
``normjax.run.evaluate``, the trainer's own set-up and eval loop.
"""

from __future__ import annotations

import runpy
import sys


def run_moved(old: str, new: str):
  """Runs command ``new`` for the old path ``python -m old``, saying where it moved."""
  print(f"{old} moved to {new}: use python -m {new} (this path still works)", file=sys.stderr)
  runpy.run_module(new, run_name="__main__", alter_sys=True)
