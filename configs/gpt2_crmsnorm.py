r"""GPT-2 with Pre-CRMSNorm (Jiang et al., NeurIPS 2023) on the embedded Python-stdlib bytes.

  python -m normjax.train --config configs/gpt2_crmsnorm.py --workdir /tmp/gpt2_crmsnorm

``configs/gpt2_layernorm.py`` (byte-level GPT-2, width 128, depth 2, 4 heads, context 128,
AdamW, 1000 steps of batch 16) with CRMSNorm: the residual stream stores d-1 = 127 coordinates
of an implicitly zero-mean 128-vector, the embeddings/``proj``/``fc2`` write 127 outputs, the
``qkv``/``fc1`` readers and the tied head read 127, and each norm is
x' / sqrt((sum x'^2 + (sum x')^2)/128 + eps) (``normjax/norms/crmsnorm.py``). A trained Pre-LN
GPT-2 converts to this architecture exactly
(``normjax.surgery.conversions.convert(..., to='crmsnorm')``, which unties the head); trained
from scratch it is the Pre-LN function class with one fewer coordinate per writer.

Measured (3 seeds): val loss 1.822 ± 0.014 nats/byte from scratch, Pre-LN 1.663 ± 0.001;
experiments/crmsnorm/README.md.

Paper scale: ``:data=tokens,path=DIR`` as gpt2_layernorm.py.

From a Hugging Face GPT-2 (Pre-LN): ``:hf=DIR`` reads the model shape and epsilon from the
checkpoint and initializes by the exact Pre-LN -> Pre-CRMSNorm conversion (``init_from =
{'hf': DIR}``, a separate head; step 0 computes what the checkpoint computes), then fine-tunes;
``python -m normjax.tools.convert --hf DIR --to crmsnorm --workdir W`` writes the converted run
without training.
"""

from normjax.config_args import base_arg, parse_arg, sibling_config


def get_config(arg=None):
  arg = parse_arg(arg, data="pystdlib", path="", hf="")
  c = sibling_config(__file__, "gpt2_layernorm", base_arg(arg, ("data", "path"), norm="crmsnorm"))
  if arg.hf:
    from normjax.interop import hf

    hf.configure_finetune(c, arg.hf)
  return c
