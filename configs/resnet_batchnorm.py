r"""ResNet with BatchNorm on the embedded digits (default) or on real image data.

  python -m normjax.train --config configs/resnet_batchnorm.py --workdir /tmp/resnet_bn

Default: a 3-stage basic-block ResNet (width 32, CIFAR stem) on scikit-learn's 8x8
digits, SGD with Nesterov momentum, 1000 steps of batch 128 on a 2-core CPU.
Measured (3 seeds): test accuracy 0.985 ± 0.003; details in experiments/baselines/README.md.

Paper scale:
  --config configs/resnet_batchnorm.py:data=cifar10      ResNet-18 (CIFAR stem), 200 epochs
  --config configs/resnet_batchnorm.py:data=imagenet2012 ResNet-50, 90 epochs, batch 1024
"""

from normjax.config_args import parse_arg, trainer_defaults


def get_config(arg=None):
  arg = parse_arg(arg, data="digits", norm="batchnorm")
  c = trainer_defaults(total_steps=1000, batch_size=128)
  c.data = dict(name=arg.data)
  c.model = dict(
    name="resnet",
    norm=arg.norm,
    norm_kwargs={},
    stage_sizes=(1, 1, 1),
    block="basic",
    width=32,
    stem="cifar",
    remat="none",  # per-block rematerialisation (normjax.models.remat)
  )
  c.optimizer = dict(name="sgd", learning_rate=0.1, weight_decay=5e-4, momentum=0.9, nesterov=True)
  c.schedule.warmup_steps = 50
  if arg.data == "cifar10":
    c.total_steps, c.total_epochs = None, 200.0
    c.batch_size, c.eval_batch_size = 128, 1000
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
