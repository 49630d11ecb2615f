r"""Training BatchNorm and only BatchNorm (Frankle, Schwab, Morcos, ICLR 2021).

  python -m normjax.train --config configs/resnet_bn_only.py --workdir /tmp/resnet_bn_only

The ResNet of configs/resnet_batchnorm.py (3-stage basic blocks, width 32, CIFAR stem) with
every conv and the linear head frozen at their random initialization: only the BatchNorm
scale/bias are trained (``config.trainable='norm_affine'``, the label of
``normjax/optim/labels.py``; every other leaf gets a zero update and no weight decay).
``zero_init_residual=False`` (all scales start at 1, as the paper's ResNets); global-norm
clipping off, since the frozen leaves' gradients would count in the global norm; SGD +
Nesterov, lr 0.1, 1000 steps of batch 128. ``:trainable=all`` trains everything (control);
``:trainable=head`` only the output layer (a linear probe on random features) and
``:trainable=norm_affine_and_head`` both.

Measured (3 seeds): test accuracy 0.952 ± 0.007 training 1,344 of 308,074 parameters (linear
probe 0.936, all 0.989); experiments/bn_only/README.md.

Paper scale: ``:data=cifar10`` (ResNet-18 layout, 160 epochs).
"""

from normjax.config_args import parse_arg, sibling_config


def get_config(arg=None):
  arg = parse_arg(arg, data="digits", trainable="norm_affine")
  c = sibling_config(__file__, "resnet_batchnorm", f"data={arg.data}")
  c.model.zero_init_residual = False
  c.trainable = None if arg.trainable == "all" else arg.trainable
  c.grad_clip_norm = None
  if arg.data == "cifar10":
    c.total_epochs = 160.0
  return c
