r"""WideNet GPT-2 (Xue et al., AAAI 2022, arXiv 2107.11817) on the embedded Python-stdlib bytes.

  python -m normjax.train --config configs/gpt2_widenet.py --workdir /tmp/gpt2_widenet
  python -m normjax.train --config configs/gpt2_widenet.py:arm=unshared

Default: WideNet as configs/vit_widenet.py (one attention and one mixture of experts, 4
experts, top-2, capacity factor 1.2, balance weight 0.01, one router, shared by all blocks;
individual LayerNorms) in configs/gpt2_layernorm.py's byte-level GPT-2 (4 heads, AdamW, batch
16) at depth 6, width 64, context 64, 400 steps (``:data=tokens,path=DIR``: that config's
paper-scale GPT-2 small with the WideNet blocks). The official code is a ViT; the
same block in a decoder is this repository's extension (the paper's NLP runs are ALBERT-style
encoders). ``arm``, ``share_router``, ``norm``: as configs/vit_widenet.py. Decoding
(normjax.tools.sample) routes every token (no capacity).

Measured: val loss 2.2518 nats/byte (seed 0, 800 s on the shared 2-core CPU); the arms over
seeds in experiments/widenet/README.md.
"""

from normjax.config_args import base_arg, parse_arg, sibling_config, sibling_module


def get_config(arg=None):
  vit = sibling_module(__file__, "vit_widenet")
  arg = parse_arg(arg, data="pystdlib", norm="layernorm", path="", depth=6, **vit.MOE_ARGS)
  c = sibling_config(__file__, "gpt2_layernorm", base_arg(arg, ("data", "norm", "path")))
  c.model.depth = arg.depth
  if arg.data == "pystdlib":  # the experiment's scale (experiments/widenet)
    c.model.width, c.total_steps = 64, 400
    c.data.update(seq_len=64, eval_windows=512)
  return vit.widenet_model(c, arg)
