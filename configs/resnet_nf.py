r"""Normalizer-free ResNet (Scaled WS + adaptive gradient clipping): the FedWon configuration.

  python -m normjax.train --config configs/resnet_nf.py --workdir /tmp/resnet_nf
  python -m normjax.train --config configs/resnet_nf.py:batch=2 --workdir /tmp/resnet_nf_b2

No normalization layer anywhere (``normjax/models/nf_resnet.py``, Brock et al. 2021): every
conv a Scaled WS conv with gain and bias, scaled ReLU (x 1.7139588594436646), pre-activation
blocks h + 0.2 * s * f(h / beta) with analytic beta and SkipInit gains s = 0; trained with
unit-wise adaptive gradient clipping (``config.adaptive_grad_clip`` -> optax.adaptive_grad_clip;
NFNets, and FedWon (Zhuang & Lyu, ICLR 2024), which trains this at batch size 1). The 3-stage
basic-block network (width 32, CIFAR stem) and SGD + Nesterov (lr 0.1, 1000 steps of batch
128) match configs/resnet_batchnorm.py; global-norm clipping is off (AGC replaces it).
``batch=N`` sets the batch size; below 32 the learning rate scales linearly (0.1 N / 32) and
the run takes 4000 steps. ``clip`` sets the AGC ratio lambda. ``model.skip_gain_init=1.0``
starts the residual branches on.

Measured: test accuracy 0.9777 (batch 128), 0.9304 (``:batch=2``); one run each; details in
experiments/fedwon/README.md.

Paper scale: ``:data=cifar10`` (NF-ResNet-18 layout, 200 epochs).
"""

from normjax.config_args import parse_arg, trainer_defaults

MICRO_BATCH = 32  # below this batch size: linear learning-rate scaling and 4000 steps


def get_config(arg=None):
  arg = parse_arg(arg, data="digits", batch=128, clip=0.16)
  c = trainer_defaults(total_steps=1000, batch_size=arg.batch)
  c.data = dict(name=arg.data)
  c.model = dict(
    name="nf_resnet",
    stage_sizes=(1, 1, 1),
    block="basic",
    width=32,
    stem="cifar",
    activation="relu",
    alpha=0.2,
    skip_gain_init=0.0,
  )
  c.optimizer = dict(name="sgd", learning_rate=0.1, weight_decay=5e-4, momentum=0.9, nesterov=True)
  c.grad_clip_norm = None
  c.adaptive_grad_clip = arg.clip
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
  return c
