r"""ELA (Efficient Local Attention, Xu & Wan 2024, arXiv 2403.01123) and the channel attentions it
is compared with, in a ResNet on the embedded digits.

  python -m normjax.train --config configs/resnet_ela.py:attention=ela_b --workdir /tmp/resnet_ela
  python -m normjax.train --config configs/resnet_ela.py:attention=ca,batch=8,train_size=200 \
      --workdir /tmp/resnet_ca_small

``attention``: 'none', 'se' (Squeeze-Excitation, r 16), 'ca' (Coordinate Attention: BN and
channel reduction 32), 'ela_t' | 'ela_b' | 'ela_s' | 'ela_l' (the pinned ELA variant table),
'ela_bn' (ELA-B with BatchNorm instead of GroupNorm: the ablation of the paper's argument),
placed at the end of every residual branch (``normjax/models/channel_attention.py``).
``batch``: the batch size (128 or, for the small-batch arm, 8); ``train_size``: 0 = the full
1438-image train split, else its first N images (``train[:N]``). The model is the BatchNorm
ResNet of ``configs/resnet_batchnorm.py`` (stages (1, 1, 1), width 32, so every block has 32,
64 or 128 channels and every ELA variant applies), SGD + Nesterov lr 0.1 (scaled by batch/128
for small batches), weight decay 5e-4, ``steps`` steps (default 500); ``width`` (32; the
experiment uses 16 to fit its CPU budget: 16/32/64 channels, where ELA-T's 32 GN groups do
not divide 16).

Measured (default attention=ela_b, batch 128, full train set, 500 steps, seed 0; 81 s on a
shared 2-core CPU): test accuracy 0.9889. Multi-seed table: experiments/ela/README.md.

Paper scale: ``:data=cifar10`` gives the CIFAR ResNet-18 of ``resnet_batchnorm`` with the chosen
attention (the paper reports ImageNet / detection results; not reproduced here).
"""

from normjax.config_args import check_choice, parse_arg, sibling_config

ATTENTIONS = ("none", "se", "ca", "ela_t", "ela_b", "ela_s", "ela_l", "ela_bn")


def get_config(arg=None):
  arg = parse_arg(
    arg, attention="ela_b", batch=128, train_size=0, steps=500, width=32, data="digits"
  )
  check_choice(arg, "attention", ATTENTIONS)
  if arg.batch < 1 or arg.train_size < 0 or arg.steps < 1:
    raise ValueError(
      f"config arguments batch={arg.batch}, train_size={arg.train_size}, steps={arg.steps}: "
      "batch and steps must be positive, train_size >= 0 (0 = the full train split)"
    )
  c = sibling_config(__file__, "resnet_batchnorm", f"data={arg.data}")
  c.model.attention = arg.attention
  if arg.data == "digits":
    c.total_steps, c.batch_size = arg.steps, arg.batch
    c.model.width = arg.width
    c.optimizer.learning_rate = 0.1 * min(1.0, arg.batch / 128)
    c.schedule.warmup_steps = min(50, arg.steps // 10)
    if arg.train_size:
      c.data.train_split = f"train[:{arg.train_size}]"
  return c
