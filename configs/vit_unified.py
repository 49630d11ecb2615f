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
``normjax.norms.folding.fold_norms`` folds it into the next linear layer (``scripts/
bench_norms.py`` times the folded model).

Measured (jax 0.10.2, 2-core CPU shared with other jobs, load average ~7; one run): test
accuracy 0.9694 (loss 0.1074), 92 s wall; vit_layernorm.py: 0.9610.

Paper scale: ``:data=cifar10`` / ``:data=imagenet2012`` as vit_layernorm.py (UN warmup 4000,
the official T2T-ViT setting).
"""
from normjax.config_args import parse_arg, trainer_defaults


def get_config(arg=None):
  arg = parse_arg(arg, data="digits", outlier_filtration=True, window=4)
  c = trainer_defaults(total_steps=1000, batch_size=64)
  c.data = dict(name=arg.data)
  c.model = dict(name="vit", norm="unifiednorm", norm_kwargs={}, placement="pre",
                 patch_size=2, width=64, depth=4, num_heads=4, mlp_dim=128, pool="cls",
                 dropout=0.0)
  c.optimizer = dict(name="adamw", learning_rate=1e-3, weight_decay=1e-4, b1=0.9, b2=0.999)
  c.schedule.warmup_steps = 100
  un_warmup = c.schedule.warmup_steps
  if arg.data == "cifar10":
    c.total_steps, c.total_epochs = None, 200.0
    c.batch_size, c.eval_batch_size = 512, 1000
    c.data = dict(name="cifar10", image_size=32)
    c.model.update(patch_size=4, width=384, depth=12, num_heads=6, mlp_dim=1536)
    c.optimizer.update(learning_rate=1e-3, weight_decay=0.05)
    c.schedule.warmup_steps = 2000
    c.eval_every, c.checkpoint_every = 2000, 2000
    un_warmup = 4000
  elif arg.data == "imagenet2012":
    c.total_steps, c.total_epochs = None, 90.0
    c.batch_size, c.eval_batch_size = 1024, 1024
    c.data = dict(name="imagenet2012", image_size=224, eval_split="validation")
    c.model.update(patch_size=16, width=384, depth=12, num_heads=6, mlp_dim=1536, pool="mean")
    c.optimizer.update(learning_rate=1e-3, weight_decay=1e-4)
    c.schedule.warmup_steps = 10000
    c.eval_every, c.checkpoint_every = 5000, 5000
    un_warmup = 4000
  c.model.norm_kwargs = dict(window=arg.window, warmup_steps=un_warmup,
                             outlier_filtration=arg.outlier_filtration, momentum=0.9,
                             epsilon=1e-5)
  return c
