r"""ViT (Pre-LN) + AdamP (Heo, Chun et al., ICLR 2021) against the AdamW of vit_layernorm.py.

  python -m normjax.train --config configs/vit_adamp.py --workdir /tmp/vit_adamp
  python -m normjax.train --config configs/vit_adamp.py:optimizer=adamw  # the control

``configs/vit_layernorm.py`` (ViT width 64, depth 4, 4 heads, 2x2 patches on 8x8 digits,
1000 steps of batch 64) with AdamP at the same numbers as its AdamW: lr 1e-3, betas
(0.9, 0.999), eps 1e-8, decoupled weight decay 1e-4 on matrices; delta 0.1, wd_ratio 0.1.
In a Pre-LN transformer no kernel is directly followed by a normalization over its output
(the LayerNorms sit before the projections, on the residual stream), so no leaf is
scale-invariant by construction; AdamP projects a leaf only in the steps where its cosine
test passes, and is otherwise AdamW. ``:optimizer=adamw`` is vit_layernorm.py's optimizer.

Measured: test accuracy 0.9554, AdamW 0.9610 (one run each); details in
experiments/adamp/README.md.

Paper scale: ``:data=imagenet2012`` (ViT-S/16, 90 epochs).
"""

from normjax.config_args import check_choice, parse_arg, sibling_config


def get_config(arg=None):
  arg = parse_arg(arg, data="digits", optimizer="adamp")
  check_choice(arg, "optimizer", ("adamp", "adamw"))
  c = sibling_config(__file__, "vit_layernorm", f"data={arg.data}")
  if arg.optimizer == "adamp":
    c.optimizer.update(name="adamp", eps=1e-8, delta=0.1, wd_ratio=0.1, nesterov=False)
  return c
