r"""ResNet with EvoNorm norm-activation layers (Liu et al., NeurIPS 2020) on the embedded digits.

  python -m normjax.train --config configs/resnet_evonorm.py --workdir /tmp/resnet_evonorm
  python -m normjax.train --config configs/resnet_evonorm.py:norm=evonorm_s0,batch=2 \
      --workdir /tmp/resnet_evonorm_s0_b2        # micro-batch: 2 images per step

``configs/resnet_batchnorm.py`` (3-stage basic-block ResNet, width 32, CIFAR stem; SGD +
Nesterov, lr 0.1, 1000 steps of batch 128) with every norm + ReLU pair replaced by one EvoNorm
layer (``normjax/norms/evonorm.py``): ``norm`` = evonorm_b0 (default, batch-dependent),
evonorm_s0 (per-sample: the micro-batch choice), evonorm_b1 or evonorm_s1. As tensorflow/tpu's
resnet_model.py, the block's last norm and the projection shortcut's norm are the
no-nonlinearity form (y = gamma x + beta; gamma starts at 0 in the last norm) and a ReLU
follows the residual add. ``batch=N`` sets the batch size; below 32 the learning rate scales
linearly (0.1 N / 32) and the run takes 4000 steps.

Measured (3 seeds): test accuracy 0.985 ± 0.001 (evonorm_b0; BatchNorm 0.985), 0.926 ± 0.008
(``:norm=evonorm_s0,batch=2``; GroupNorm at batch 2 0.963); experiments/evonorm/README.md.

Paper scale: ``:data=cifar10`` (ResNet-18, 200 epochs), ``:data=imagenet2012`` (ResNet-50,
90 epochs, batch 1024, the TF EvoNorm setting).
"""

from normjax.config_args import check_choice, parse_arg, sibling_config

NORMS = ("evonorm_b0", "evonorm_s0", "evonorm_b1", "evonorm_s1")
MICRO_BATCH = 32  # below this batch size: linear learning-rate scaling and 4000 steps


def get_config(arg=None):
  arg = parse_arg(arg, data="digits", norm="evonorm_b0", batch=128)
  check_choice(arg, "norm", NORMS)
  c = sibling_config(__file__, "resnet_batchnorm", f"data={arg.data},norm={arg.norm}")
  return micro_batch(c, arg)


def micro_batch(c, arg):
  """``batch=N``: below ``MICRO_BATCH``, linear learning-rate scaling and 4000 steps."""
  if arg.data == "imagenet2012":  # the paper recipe keeps its own batch
    return c
  c.batch_size = arg.batch
  if arg.batch < MICRO_BATCH:
    c.optimizer.learning_rate = 0.1 * arg.batch / MICRO_BATCH
    if c.total_steps is not None:
      c.total_steps = 4000
  return c
