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

Measured (jax 0.10.2, 2-core CPU shared with other jobs at load 6-8, one run each):
  default (evonorm_b0, batch 128, 1000 steps)    test accuracy 0.9833 (loss 0.0754), 217 s
  :norm=evonorm_s0,batch=2 (lr 0.00625, 4000 steps) test accuracy 0.9136 (loss 0.2754), 56 s

Paper scale: ``:data=cifar10`` (ResNet-18, 200 epochs), ``:data=imagenet2012`` (ResNet-50,
90 epochs, batch 1024, the TF EvoNorm setting).
"""
from normjax.config_args import parse_arg, trainer_defaults

NORMS = ("evonorm_b0", "evonorm_s0", "evonorm_b1", "evonorm_s1")
MICRO_BATCH = 32  # below this batch size: linear learning-rate scaling and 4000 steps


def get_config(arg=None):
  arg = parse_arg(arg, data="digits", norm="evonorm_b0", batch=128)
  if arg.norm not in NORMS:
    raise ValueError(f"config argument norm={arg.norm!r}: one of {', '.join(NORMS)}")
  c = trainer_defaults(total_steps=1000, batch_size=arg.batch)
  c.data = dict(name=arg.data)
  c.model = dict(name="resnet", norm=arg.norm, norm_kwargs={}, stage_sizes=(1, 1, 1),
                 block="basic", width=32, stem="cifar")
  c.optimizer = dict(name="sgd", learning_rate=0.1, weight_decay=5e-4, momentum=0.9,
                     nesterov=True)
  c.schedule.warmup_steps = 50
  if arg.batch < MICRO_BATCH:
    c.optimizer.learning_rate = 0.1 * arg.batch / MICRO_BATCH
    c.total_steps = 4000
  if arg.data == "cifar10":
    c.total_steps, c.total_epochs = None, 200.0
    c.eval_batch_size = 1000
    c.data = dict(name="cifar10", image_size=32)
    c.model.update(stage_sizes=(2, 2, 2, 2), width=64)
    c.schedule.warmup_steps = 390
    c.eval_every, c.checkpoint_every = 2000, 2000
  elif arg.data == "imagenet2012":
    c.total_steps, c.total_epochs = None, 90.0
    c.batch_size, c.eval_batch_size = 1024, 1000
    c.data = dict(name="imagenet2012", image_size=224, eval_split="validation")
    c.model.update(stage_sizes=(3, 4, 6, 3), block="bottleneck", width=64, stem="imagenet")
    c.optimizer.update(learning_rate=0.4, weight_decay=1e-4)
    c.schedule.warmup_steps = 6250
    c.eval_every, c.checkpoint_every = 5000, 5000
  return c
