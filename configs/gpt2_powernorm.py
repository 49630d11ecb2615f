r"""GPT-2 with PowerNorm (Shen et al., ICML 2020) on the embedded Python-stdlib bytes.

  python -m normjax.train --config configs/gpt2_powernorm.py --workdir /tmp/gpt2_powernorm

``configs/gpt2_layernorm.py`` (byte-level GPT-2, width 128, depth 2, 4 heads, context 128,
AdamW, 1000 steps of batch 16) with every LayerNorm replaced by PowerNorm
(``normjax/norms/powernorm.py``): GroupScaling with groups = heads (official NormSelect), batch
quadratic mean over all B*T tokens, running statistic after warmup, approximate backward
(alpha_fwd = alpha_bkw = 0.9). PowerNorm's default warmup (10000) is longer than this run; as
the official fairseq scripts pass the LR warmup (--warmup-updates), the config sets
``warmup_steps`` = ``schedule.warmup_steps``. (The paper uses PN in the encoder of a
translation model and keeps LN in the decoder; a causal LM normalized over the batch lets a
token's normalization see other positions' statistics, as in their decoder ablation.)

Measured (3 seeds): val loss 1.661 ± 0.006 nats/byte, Pre-LN 1.663 ± 0.001; table, plot and
verdict in experiments/powernorm/README.md.

Paper scale: ``:data=tokens,path=DIR`` as gpt2_layernorm.py.
"""

from normjax.config_args import base_arg, parse_arg, sibling_config


def get_config(arg=None):
  arg = parse_arg(arg, data="pystdlib", path="")
  c = sibling_config(__file__, "gpt2_layernorm", base_arg(arg, ("data", "path"), norm="powernorm"))
  c.model.norm_kwargs = dict(
    groups=c.model.num_heads,
    warmup_steps=c.schedule.warmup_steps,
    alpha_fwd=0.9,
    alpha_bkw=0.9,
    epsilon=1e-5,
  )
  return c
