r"""GPT-2 + AdamW: the tuned baseline for the optimizer comparisons (gpt2_conda, gpt2_muon).

  python -m normjax.train --config configs/gpt2_adamw.py --workdir /tmp/gpt2_adamw
  python -m normjax.tools.sweep --config configs/sweeps/gpt2_lr.py:optimizer=adamw  # its lr sweep

The model, data and schedule of ``configs/gpt2_layernorm.py`` (byte-level GPT-2, width 128,
depth 2, Pre-LN, context 128, 1000 steps of batch 16, warmup 100, cosine to 0.1x the peak,
global-norm clipping 1.0); AdamW betas (0.9, 0.95), eps 1e-8, weight decay 0.1 on matrices
only (nanoGPT and the Conda repository's AdamW baseline). The peak learning rate is the
best of a sweep, not a default; 3e-3 is gpt2_layernorm.py's (the norm comparisons keep it).

Measured: val loss 1.6300 ± 0.0053 nats/byte at lr 1e-2, the sweep's best (seeds 0-2);
details in experiments/gpt2_optimizers/README.md.

Paper scale: ``:data=tokens,path=DIR`` is GPT-2 small on OpenWebText at nanoGPT's lr 6e-4
(the Conda repository's AdamW baseline: the same betas, decay and clipping).
"""

from normjax.config_args import base_arg, parse_arg, sibling_config

SWEPT_LEARNING_RATE = 1e-2  # the best of its sweep (experiments/gpt2_optimizers)


def get_config(arg=None):
  arg = parse_arg(arg, data="pystdlib", path="")
  c = sibling_config(__file__, "gpt2_layernorm", base_arg(arg, ("data", "path")))
  c.optimizer = dict(
    name="adamw", learning_rate=SWEPT_LEARNING_RATE, weight_decay=0.1, b1=0.9, b2=0.95, eps=1e-8
  )
  if arg.data == "tokens":
    c.optimizer.learning_rate = 6e-4
  return c
