r"""GPT-2 + Conda (column-normalized Adam; jie040109/Conda) against the tuned AdamW baseline.

  python -m normjax.train --config configs/gpt2_conda.py --workdir /tmp/gpt2_conda
  python -m normjax.tools.sweep --config configs/sweeps/gpt2_lr.py:optimizer=conda  # its lr sweep

``configs/gpt2_adamw.py`` (byte-level GPT-2, width 128, depth 2, 1000 steps of batch 16,
warmup 100, cosine to 0.1x, clipping 1.0) with ``normjax.optim.conda`` in the official GPT-2
recipe's form (``examples/gpt2/config``): Conda on the attention and MLP kernels only
(``conda_mask='attention_mlp_kernels'``: qkv, attention output, fc1, fc2), ``scale`` 0.25,
betas (0.9, 0.99), eps 1e-8, weight decay 0.01 applied after the step; the embeddings
(tied head), norms and biases take Conda's plain AdamW path at the same learning rate
without the scale. The basis is refreshed every ``update_proj_gap`` = 200 steps: the
official T = 2000 is 2% of its 100k steps and 20% of the LLaMA-60M run's 10k; 200 gives
this 1000-step run 5 refreshes, the LLaMA recipe's count. The peak learning rate (5e-2) is
the best of a sweep. ``rotated_momentum=True`` (same updates to rounding, a third fewer
rotation FLOPs) is available but off, to keep the official state layout.

Deviation from the official script, on purpose: the weight decay uses the AdamW baseline's
mask (matrices only; the official GPT-2 script has no no-decay group, so its LayerNorm
weights decay too), so that the comparison with gpt2_adamw changes only the optimizer.

Measured: val loss 1.5886 ± 0.0048 nats/byte at lr 5e-2 (seeds 0-2; AdamW 1.6300 ± 0.0053);
details in experiments/gpt2_optimizers/README.md.

Paper scale: ``:data=tokens,path=DIR``, GPT-2 small on OpenWebText with the official recipe
(lr 6e-3, T 2000).
"""

from ml_collections.config_dict import placeholder

from normjax.config_args import base_arg, parse_arg, sibling_config

SWEPT_LEARNING_RATE = 5e-2  # the best of its sweep (experiments/gpt2_optimizers)


def get_config(arg=None):
  arg = parse_arg(arg, data="pystdlib", path="")
  c = sibling_config(__file__, "gpt2_adamw", base_arg(arg, ("data", "path")))
  c.optimizer = dict(
    name="conda",
    learning_rate=SWEPT_LEARNING_RATE,
    weight_decay=0.01,
    b1=0.9,
    b2=0.99,
    eps=1e-8,
    scale=0.25,
    update_proj_gap=200,
    conda_mask="attention_mlp_kernels",
    singular_value_rtol=placeholder(float),
  )  # None: official
  if arg.data == "tokens":
    c.optimizer.update(learning_rate=6e-3, update_proj_gap=2000)
  return c
