r"""GPT-2 with Peri-LN (Kim et al., ICML 2025) on the embedded Python-stdlib bytes.

  python -m normjax.train --config configs/gpt2_perinorm.py --workdir /tmp/gpt2_perinorm
  python -m normjax.train --config configs/gpt2_perinorm.py:norm=rmsnorm,embedding_norm=True

``configs/gpt2_layernorm.py`` (byte-level GPT-2, width 128, depth 2, 4 heads, context 128,
AdamW, 1000 steps of batch 16) with ``placement='peri'``: each sublayer computes
x + Norm_out(f(Norm_in(x))) (a norm on the module's input and on its output before the
residual add; nothing on the residual path), plus the final norm; ``embedding_norm=True`` adds
the optional norm on the embeddings. ``norm`` picks LayerNorm (default) or RMSNorm (then the
block is Gemma 2's).

Measured (3 seeds): val loss 1.858 ± 0.012 nats/byte, 1.706 ± 0.005 with
``embedding_norm=True`` (Pre-LN 1.663 ± 0.001); table, residual variance by depth and verdict
in experiments/peri_ln/README.md.

Paper scale: ``:data=tokens,path=DIR`` as gpt2_layernorm.py (the paper: 400M-3.2B params).
"""

from normjax.config_args import base_arg, parse_arg, sibling_config


def get_config(arg=None):
  arg = parse_arg(arg, data="pystdlib", norm="layernorm", path="", embedding_norm=False)
  c = sibling_config(__file__, "gpt2_layernorm", base_arg(arg, ("data", "path"), norm=arg.norm))
  c.model.placement = "peri"
  c.model.embedding_norm = arg.embedding_norm
  return c
