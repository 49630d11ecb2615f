r"""Weight Compander (Cakaj, Mehnert, Yang, IJCNN 2023, arXiv 2306.16993) in an overfitting regime.

  python -m normjax.train --config configs/resnet_weight_compander.py:arm=fixed --workdir /tmp/wc
  python -m normjax.train --config configs/resnet_weight_compander.py:arm=learnable \
      --workdir /tmp/wc_learnable

``arm``: 'baseline' (plain kernels, coupled weight decay on w), 'fixed' (every Dense/Conv
kernel w = a arctan(v / b) with one (a, b) for the network, default the paper's ResNet18
CIFAR-10 pair (1.0, 0.6); decay (lambda / 2) ||Psi(v)||^2 as a loss term, none on v), or
'learnable' (one trainable (a, b) per layer, initialised to ``a``, ``b``, default the paper's
best init (0.5, 1.0); decay on v only). ``normjax/models/weight_compander.py``.
Digits, first ``train_size`` (300) training images, the BatchNorm ResNet of
``configs/resnet_batchnorm.py`` (stages (1, 1, 1), width 32); SGD momentum 0.9 (no Nesterov,
no gradient clipping, as the paper), lr 0.1 cosine, weight decay ``wd`` (5e-4) in every arm,
``steps`` (300) steps of batch 128 (~130 epochs of the subset).
``optimizer=adam``: the arms with Adam lr 1e-3; WC arms then use ``compander_adam`` (the
Powerpropagation-style step, ``normjax/optim/_compander.py``).

Measured (``steps=150``, 3 seeds, shared 2-core CPU): test accuracy 0.930 (baseline), 0.903
(fixed), 0.830 (learnable); table, plot, verdict: experiments/weight_compander/README.md.

Paper scale: ``:data=cifar10`` (ResNet-18, 200 epochs, full train set; pass ``train_size=0``).
"""

from normjax.config_args import check_choice, parse_arg, sibling_config


def get_config(arg=None):
  arg = parse_arg(
    arg,
    arm="fixed",
    a=0.0,  # 0: the arm's paper default, fixed (1.0, 0.6), learnable init (0.5, 1.0)
    b=0.0,
    wd=5e-4,
    train_size=300,
    steps=300,
    optimizer="sgd",
    data="digits",
  )
  check_choice(arg, "arm", ("baseline", "fixed", "learnable"))
  check_choice(arg, "optimizer", ("sgd", "adam"))
  default_a, default_b = (0.5, 1.0) if arg.arm == "learnable" else (1.0, 0.6)
  arg.a, arg.b = arg.a or default_a, arg.b or default_b
  c = sibling_config(__file__, "resnet_batchnorm", f"data={arg.data}")
  c.grad_clip_norm = None
  if arg.data == "digits":
    c.total_steps = arg.steps
    c.schedule.warmup_steps = min(50, arg.steps // 10)
  if arg.train_size:
    c.data.train_split = f"train[:{arg.train_size}]"
  if arg.optimizer == "sgd":
    c.optimizer = dict(name="sgd", learning_rate=0.1, weight_decay=arg.wd, momentum=0.9)
  elif arg.arm == "baseline":
    c.optimizer = dict(name="adamw", learning_rate=1e-3, weight_decay=arg.wd)
  else:
    c.optimizer = dict(name="compander_adam", learning_rate=1e-3, weight_decay=arg.wd)
    c.optimizer.update(a=arg.a, b=arg.b)
  if arg.arm == "fixed":  # decay on Psi(v) by the loss term, not on v by the optimizer
    c.weight_compander = dict(a=arg.a, b=arg.b, learnable=False, weight_decay=arg.wd)
    c.optimizer.update(weight_decay=0.0, decay_mask="decay_except_kernels")
  elif arg.arm == "learnable":
    c.weight_compander = dict(a=arg.a, b=arg.b, learnable=True, weight_decay=0.0)
  return c
