r"""ViT, pre-LayerNorm, on the embedded digits (default) or on real image data.

  python -m normjax.train --config configs/vit_layernorm.py --workdir /tmp/vit_ln

Default: ViT (width 64, depth 4, 4 heads, 2x2 patches, class token) on scikit-learn's
8x8 digits, AdamW, 1000 steps of batch 64 (~45 epochs) on a 2-core CPU.
Measured (3 seeds): test accuracy 0.962 ± 0.005; details in experiments/baselines/README.md.

Paper scale (data prepared with `tfds build cifar10 --file_format=array_record`):
  --config configs/vit_layernorm.py:data=cifar10     ViT-S/4 on 32x32 CIFAR-10, 200 epochs
  --config configs/vit_layernorm.py:data=imagenet2012 ViT-S/16, 90 epochs (big_vision recipe)
"""

from normjax.config_args import parse_arg, trainer_defaults


def get_config(arg=None):
  arg = parse_arg(arg, data="digits", norm="layernorm")
  c = trainer_defaults(total_steps=1000, batch_size=64)
  c.data = dict(name=arg.data)
  c.model = dict(
    name="vit",
    norm=arg.norm,
    norm_kwargs={},
    placement="pre",
    patch_size=2,
    width=64,
    depth=4,
    num_heads=4,
    mlp_dim=128,
    pool="cls",
    dropout=0.0,
    remat="none",  # per-block rematerialisation (normjax.models.remat)
    scan_layers=False,  # True: blocks stacked, run in nnx.scan (normjax.models.layer_stack)
  )
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
  return c
