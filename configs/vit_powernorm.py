r"""ViT with PowerNorm (Shen et al., ICML 2020) on the embedded digits (default) or real images.

  python -m normjax.train --config configs/vit_powernorm.py --workdir /tmp/vit_powernorm

``configs/vit_layernorm.py`` (ViT width 64, depth 4, 4 heads, 2x2 patches, AdamW, 1000 steps of
batch 64) with every LayerNorm replaced by PowerNorm (``normjax/norms/powernorm.py``): batch
quadratic mean (no centering) over the batch and tokens, GroupScaling with groups = heads (as the
official NormSelect), running statistic after warmup, approximate backward with the EMA
gradient statistic (alpha_fwd = alpha_bkw = 0.9). PowerNorm's own default warmup (10000 steps)
is longer than this run; as the official scripts tie it to the LR warmup (warmup_updates), the
config sets ``warmup_steps`` = ``schedule.warmup_steps`` (100 here).

Measured (jax 0.10.2, 2-core CPU shared with other jobs, load average ~6.5; one run): test
accuracy 0.9471 (loss 0.2373), 93 s wall; vit_layernorm.py: 0.9610.

Paper scale: ``:data=cifar10`` / ``:data=imagenet2012`` as vit_layernorm.py (PowerNorm warmup =
LR warmup, groups = heads).
"""
from normjax.config_args import parse_arg, trainer_defaults


def get_config(arg=None):
  arg = parse_arg(arg, data="digits")
  c = trainer_defaults(total_steps=1000, batch_size=64)
  c.data = dict(name=arg.data)
  c.model = dict(name="vit", norm="powernorm", norm_kwargs={}, placement="pre",
                 patch_size=2, width=64, depth=4, num_heads=4, mlp_dim=128, pool="cls",
                 dropout=0.0)
  c.optimizer = dict(name="adamw", learning_rate=1e-3, weight_decay=1e-4, b1=0.9, b2=0.999)
  c.schedule.warmup_steps = 100
  if arg.data == "cifar10":
    c.total_steps, c.total_epochs = None, 200.0
    c.batch_size, c.eval_batch_size = 512, 1000
    c.data = dict(name="cifar10", image_size=32)
    c.model.update(patch_size=4, width=384, depth=12, num_heads=6, mlp_dim=1536)
    c.optimizer.update(learning_rate=1e-3, weight_decay=0.05)
    c.schedule.warmup_steps = 2000
    c.eval_every, c.checkpoint_every = 2000, 2000
  elif arg.data == "imagenet2012":
    c.total_steps, c.total_epochs = None, 90.0
    c.batch_size, c.eval_batch_size = 1024, 1024
    c.data = dict(name="imagenet2012", image_size=224, eval_split="validation")
    c.model.update(patch_size=16, width=384, depth=12, num_heads=6, mlp_dim=1536, pool="mean")
    c.optimizer.update(learning_rate=1e-3, weight_decay=1e-4)
    c.schedule.warmup_steps = 10000
    c.eval_every, c.checkpoint_every = 5000, 5000
  c.model.norm_kwargs = dict(groups=c.model.num_heads, warmup_steps=c.schedule.warmup_steps,
                             alpha_fwd=0.9, alpha_bkw=0.9, epsilon=1e-5)
  return c
