r"""Peak learning-rate sweep of a GPT-2 optimizer config (default: the AdamW baseline).

  python -m normjax.tools.sweep --config configs/sweeps/gpt2_lr.py --workdir /tmp/sweep_adamw
  python -m normjax.tools.sweep --config configs/sweeps/gpt2_lr.py:optimizer=conda
  python -m normjax.tools.sweep --config configs/sweeps/gpt2_lr.py:optimizer=adamw,seeds=3

``configs/gpt2_<optimizer>.py`` at its defaults (embedded stdlib bytes, 1000 steps) with
``optimizer.learning_rate`` on a grid of ``lrs`` (``lrs=1e-3_2e-3``: '_'-separated) and
``seeds`` seeds each; the summary is the final validation loss (nats/byte), lower is better.
For Conda and Muon the top-level learning rate is the one both parameter groups share (the
official recipes run embeddings/norms and the matrices at the same peak lr).
Results: experiments/gpt2_optimizers/README.md.
"""

import ml_collections

from normjax.config_args import parse_arg


def get_config(arg=None):
  arg = parse_arg(arg, optimizer="adamw", lrs="1e-3_2e-3_3e-3_6e-3_1e-2_2e-2_3e-2", seeds=1)
  c = ml_collections.ConfigDict()
  c.base = f"../gpt2_{arg.optimizer}.py"
  c.base_arg = ""
  c.grid = {"optimizer": {"learning_rate": [float(x) for x in arg.lrs.split("_")]}}
  if arg.seeds > 1:
    c.grid.seed = list(range(arg.seeds))
  c.fixed = {}
  c.metric = "eval_loss"
  c.goal = "min"
  return c
