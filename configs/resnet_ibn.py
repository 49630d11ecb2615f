r"""IBN-Net ResNets (Pan et al., ECCV 2018): IBN-a or IBN-b on the embedded digits.

  python -m normjax.train --config configs/resnet_ibn.py:variant=a --workdir /tmp/resnet_ibn_a
  python -m normjax.train --config configs/resnet_ibn.py:variant=b --workdir /tmp/resnet_ibn_b
  python -m normjax.train --config configs/resnet_ibn.py:variant=none --workdir /tmp/resnet_bn221

A BatchNorm ResNet (``normjax/models/resnet.py`` with ``ibn='a' | 'b'``): IBN-a puts an IBN
layer (InstanceNorm on half the channels, BatchNorm on the rest; ``normjax/norms/ibn.py``)
after the first conv of every block of all stages but the last; IBN-b makes the stem norm an
InstanceNorm and adds an InstanceNorm after the residual add of the last block of the first
two stages. Stages of 2, 2, 1 basic blocks (so both variants have their IN layers; the
official IBN-b skips a stage's first block; ``variant=none`` is the same network with
BatchNorm only, the like-for-like control), width 32, CIFAR stem; BatchNorm momentum 0.9 and
eps 1e-5 (PyTorch's); SGD + Nesterov, lr 0.1, 1000 steps of batch 128.

Measured (3 seeds): test accuracy 0.985 (IBN-a, IBN-b), 0.983 (``variant=none``); on blurred
digits 0.668 / 0.639 / 0.396; experiments/ibn/README.md.

Paper scale: ``:variant=a,data=imagenet2012`` (ResNet-50-IBN-a, 90 epochs, batch 1024).
"""

from normjax.config_args import check_choice, parse_arg, sibling_config


def get_config(arg=None):
  arg = parse_arg(arg, variant="a", data="digits")
  check_choice(arg, "variant", ("a", "b", "none"))  # IBN-a, IBN-b, the same net with BN only
  c = sibling_config(__file__, "resnet_batchnorm", f"data={arg.data}")
  ibn = None if arg.variant == "none" else arg.variant
  c.model.update(ibn=ibn, norm_kwargs=dict(momentum=0.9, epsilon=1e-5))
  if arg.data == "digits":
    c.model.stage_sizes = (2, 2, 1)
  return c
