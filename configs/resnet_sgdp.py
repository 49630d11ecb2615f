r"""ResNet (BatchNorm) + SGDP (Heo, Chun et al., ICLR 2021) against SGD at the same settings.

  python -m normjax.train --config configs/resnet_sgdp.py --workdir /tmp/resnet_sgdp
  python -m normjax.train --config configs/resnet_sgdp.py:optimizer=sgd  # the control

``configs/resnet_batchnorm.py`` (3-stage basic-block ResNet, width 32, CIFAR stem, 1000
steps of batch 128, warmup 50, cosine; 8x8 digits) with SGDP instead of SGD: lr 0.1,
Nesterov momentum 0.9, weight decay 5e-4, delta 0.1, wd_ratio 0.1. SGDP decays decoupled,
before the step, as p <- p (1 - lr wd r / (1 - momentum)) (official code), the
steady-state size of the baseline's coupled L2 term 5e-4 under momentum 0.9; the BN-fed
conv kernels are scale-invariant, so the cosine test projects their updates and their
decay is multiplied by wd_ratio. ``:optimizer=sgd`` is resnet_batchnorm.py's optimizer
(SGD + Nesterov, coupled L2 5e-4), the control.

Measured: test accuracy 0.9833 for SGDP, 0.9805 for the SGD control (one run each); details
in experiments/adamp/README.md.

Paper scale: ``:data=imagenet2012`` (ResNet-50, 90 epochs; README's SGDP usage is lr 0.1,
wd 1e-5, momentum 0.9, Nesterov; the paper's ImageNet runs use wd 1e-4 like the baseline).
"""

from normjax.config_args import check_choice, parse_arg, sibling_config


def get_config(arg=None):
  arg = parse_arg(arg, data="digits", optimizer="sgdp")
  check_choice(arg, "optimizer", ("sgdp", "sgd"))
  c = sibling_config(__file__, "resnet_batchnorm", f"data={arg.data}")
  if arg.optimizer == "sgdp":
    c.optimizer = dict(
      name="sgdp",
      learning_rate=c.optimizer.learning_rate,
      weight_decay=c.optimizer.weight_decay,
      momentum=0.9,
      nesterov=True,
      dampening=0.0,
      delta=0.1,
      wd_ratio=0.1,
    )
  return c
