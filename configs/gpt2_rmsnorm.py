r"""GPT-2 with Pre-RMSNorm (Zhang & Sennrich 2019; Jiang et al., NeurIPS 2023) on stdlib bytes.

  python -m normjax.train --config configs/gpt2_rmsnorm.py --workdir /tmp/gpt2_rmsnorm
  python -m normjax.train --config configs/gpt2_rmsnorm.py:zero_mean=True  # Pre-LN-equivalent

``configs/gpt2_layernorm.py`` (byte-level GPT-2, width 128, depth 2, 4 heads, context 128,
AdamW, 1000 steps of batch 16) with RMSNorm (scale only, eps 1e-6) instead of LayerNorm.
``zero_mean=True`` adds the zero-mean reparameterisation of every residual-stream writer
(``zero_mean_writers``; Jiang et al.): the stream is then zero-mean, RMSNorm(x) = LayerNorm(x)
without the LN bias, and a Pre-LN model converts to it exactly
(``normjax.surgery.conversions``, tested in ``tests/test_crmsnorm_conversions.py``).

Measured (3 seeds): val loss 1.664 ± 0.008 nats/byte, Pre-LN 1.663 ± 0.001; table, plot and
verdict in experiments/crmsnorm/README.md.

Paper scale: ``:data=tokens,path=DIR`` as gpt2_layernorm.py.

From a Hugging Face GPT-2 (Pre-LN): ``:hf=DIR`` reads the model shape and epsilon from the
checkpoint and initializes by the exact Pre-LN -> Pre-RMSNorm conversion (``init_from =
{'hf': DIR}``, a separate head; step 0 computes what the checkpoint computes), then fine-tunes;
``python -m normjax.tools.convert --hf DIR --to rmsnorm --workdir W`` writes the converted run
without training.
"""

from normjax.config_args import base_arg, parse_arg, sibling_config


def get_config(arg=None):
  arg = parse_arg(arg, data="pystdlib", path="", zero_mean=False, hf="")
  c = sibling_config(__file__, "gpt2_layernorm", base_arg(arg, ("data", "path"), norm="rmsnorm"))
  c.model.zero_mean_writers = arg.zero_mean
  if arg.hf:
    from normjax.interop import hf

    hf.configure_finetune(c, arg.hf)
  return c
