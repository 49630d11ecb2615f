r"""ResNet (BatchNorm) + AdamP (Heo, Chun et al., ICLR 2021) against AdamW at the same settings.

  python -m normjax.train --config configs/resnet_adamp.py --workdir /tmp/resnet_adamp
  python -m normjax.train --config configs/resnet_adamp.py:optimizer=adamw  # the control

The ResNet of ``configs/resnet_batchnorm.py`` (3-stage basic blocks, width 32, CIFAR stem,
1000 steps of batch 128, warmup 50, cosine; 8x8 digits). Every convolution feeds a
BatchNorm with no bias in between, so the conv kernels are scale-invariant: AdamP's
cosine test passes on them and it removes the radial component of their update and
multiplies their weight decay by ``wd_ratio`` 0.1; the head and the BN affine parameters
fail the test (or are 1-D) and get Adam's update unchanged. Hyper-parameters: the
official README's AdamP usage (lr 1e-3, betas (0.9, 0.999), eps 1e-8, weight decay 1e-2
decoupled, applied before the step; delta 0.1, wd_ratio 0.1); weight decay on matrices
only. ``:optimizer=adamw`` runs ``optax.adamw`` with the same numbers (the control).

Measured: test accuracy 0.9861 for AdamP and for the AdamW control (one run each); details
in experiments/adamp/README.md.

Paper scale: ``:data=imagenet2012`` (ResNet-50, 90 epochs; the paper's AdamP row).
"""

from normjax.config_args import check_choice, parse_arg, sibling_config


def get_config(arg=None):
  arg = parse_arg(arg, data="digits", optimizer="adamp")
  check_choice(arg, "optimizer", ("adamp", "adamw"))
  c = sibling_config(__file__, "resnet_batchnorm", f"data={arg.data}")
  c.optimizer = dict(
    name=arg.optimizer, learning_rate=1e-3, weight_decay=1e-2, b1=0.9, b2=0.999, eps=1e-8
  )
  if arg.optimizer == "adamp":
    c.optimizer.update(delta=0.1, wd_ratio=0.1, nesterov=False)
  return c
