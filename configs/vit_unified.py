r"""ViT with Unified Normalization (Yang et al., ACM MM 2022) on the embedded digits (default).

  python -m normjax.train --config configs/vit_unified.py --workdir /tmp/vit_unified

``configs/vit_layernorm.py`` (ViT width 64, depth 4, 4 heads, 2x2 patches, AdamW, 1000 steps of
batch 64) with every LayerNorm replaced by UnifiedNorm (``normjax/norms/unified.py``): window 4
(geometric mean of the last 4 batch quadratic means forward; window mean then EMA of the
gradient statistic backward), momentum 0.9, eps 1e-5, adaptive outlier filtration ON (the
official recommendation for vision; their T2T-ViT uses it). UN's default warmup (4000 steps) is
longer than this run, so ``warmup_steps`` = ``schedule.warmup_steps`` (100 here). The
gradient-compensation ratio only switches on after max(1000, warmup) steps (official), i.e. not
within the default 1000 steps. In eval mode UN is a per-channel affine map:
``normjax.surgery.folding.fold_norms`` folds it into the next linear layer (``scripts/
bench_norms.py`` times the folded model).

Measured (3 seeds): test accuracy 0.960 ± 0.005, vit_layernorm.py 0.962 ± 0.005; table, plot
and verdict in experiments/unified_norm/README.md.

Paper scale: ``:data=cifar10`` / ``:data=imagenet2012`` as vit_layernorm.py (UN warmup 4000,
the official T2T-ViT setting).
"""

from normjax.config_args import parse_arg, sibling_config


def get_config(arg=None):
  arg = parse_arg(arg, data="digits", outlier_filtration=True, window=4)
  c = sibling_config(__file__, "vit_layernorm", f"data={arg.data},norm=unifiednorm")
  # UN warmup: the LR warmup on digits; the official 4000 steps at paper scale.
  un_warmup = c.schedule.warmup_steps if arg.data == "digits" else 4000
  c.model.norm_kwargs = dict(
    window=arg.window,
    warmup_steps=un_warmup,
    outlier_filtration=arg.outlier_filtration,
    momentum=0.9,
    epsilon=1e-5,
  )
  return c
