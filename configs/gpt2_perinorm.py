r"""GPT-2 with Peri-LN (Kim et al., ICML 2025) on the embedded Python-stdlib bytes.

  python -m normjax.train --config configs/gpt2_perinorm.py --workdir /tmp/gpt2_perinorm
  python -m normjax.train --config configs/gpt2_perinorm.py:norm=rmsnorm,embedding_norm=True

``configs/gpt2_layernorm.py`` (byte-level GPT-2, width 128, depth 2, 4 heads, context 128,
AdamW, 1000 steps of batch 16) with ``placement='peri'``: each sublayer computes
x + Norm_out(f(Norm_in(x))) (a norm on the module's input and on its output before the
residual add; nothing on the residual path), plus the final norm; ``embedding_norm=True`` adds
the optional norm on the embeddings. ``norm`` picks LayerNorm (default) or RMSNorm (then the
block is Gemma 2's).

Measured (jax 0.10.2, 2-core CPU shared with other jobs; one run each): validation loss
1.8637 nats/byte (296 s wall, load ~5), and 1.7112 with ``embedding_norm=True`` (229 s, load
~4); gpt2_layernorm.py at the same settings: 1.6601. At this size and step count Peri-LN trails
Pre-LN. A likely reason: each branch writes a unit-RMS (normalized) vector while the N(0, 0.02)
embeddings stay tiny, so the token signal is swamped at first; the embedding norm (or Gemma's
sqrt(d) embedding scale) closes most of the gap. The paper's gains are at 400M-3.2B.

Paper scale: ``:data=tokens,path=DIR`` as gpt2_layernorm.py (the paper: 400M-3.2B params).
"""
from normjax.config_args import base_arg, parse_arg, sibling_config


def get_config(arg=None):
  arg = parse_arg(arg, data="pystdlib", norm="layernorm", path="", embedding_norm=False)
  c = sibling_config(__file__, "gpt2_layernorm", base_arg(arg, ("data", "path"), norm=arg.norm))
  c.model.placement = "peri"
  c.model.embedding_norm = arg.embedding_norm
  return c
