r"""Loss of plasticity on a sequence of digits tasks (NaP's setting), with and without NaP.

  python -m normjax.tools.plasticity --config configs/plasticity_digits.py:norm=layernorm,opt=nap \
      --workdir /tmp/plast --seeds 3
  # arguments: norm=none|layernorm|batchnorm, opt=adam|nap, tasks, steps (per task), lr,
  #            shift=permute_pixels|shuffle_labels|random_labels, examples (0: all)

``normjax/tools/plasticity.py`` has the protocol: ``tasks`` tasks of ``steps`` Adam steps
(batch 64, constant learning rate ``lr``) on the embedded digits with a new pixel permutation
(or label permutation) per task, no reset in between; the training accuracy on each task at
its end measures plasticity. Network: ``normjax/models/cnn.py`` (3 x conv-norm-ReLU, width 32;
``norm=none`` is the same network without normalization). ``opt=nap``: Normalize-and-Project
(``normjax/optim/_nap.py``, Lyle et al. 2024): the same Adam, then every kernel projected back
to its norm at initialization after each step (the paper pairs it with a norm before every
nonlinearity: ``norm=layernorm``).

Measured: 30 random-label tasks, late-task train accuracy 0.9998 (LayerNorm + NaP), 0.9976
(LayerNorm), 0.1319 (no norm), 3 seeds; details in experiments/nap/README.md.
"""

from normjax.config_args import check_choice, parse_arg, trainer_defaults


def get_config(arg=None):
  arg = parse_arg(
    arg,
    norm="layernorm",
    opt="nap",
    shift="permute_pixels",
    tasks=10,
    steps=200,
    lr=1e-3,
    examples=0,
  )
  check_choice(arg, "norm", ("none", "layernorm", "batchnorm"))
  check_choice(arg, "opt", ("adam", "nap"))
  check_choice(arg, "shift", ("permute_pixels", "shuffle_labels", "random_labels"))
  c = trainer_defaults(total_steps=arg.tasks * arg.steps, batch_size=64)
  c.log_every = 50
  c.grad_clip_norm = None
  c.schedule.warmup_steps = 0
  c.schedule.decay = "constant"
  c.data = dict(name="digits")
  c.model = dict(name="cnn", norm=arg.norm, norm_kwargs={}, width=32, depth=3)
  c.optimizer = dict(name="adamw", learning_rate=arg.lr, weight_decay=0.0)
  if arg.opt == "nap":
    c.optimizer = dict(name="nap", base="adamw", learning_rate=arg.lr, weight_decay=0.0)
  c.plasticity = dict(
    shift=arg.shift, num_tasks=arg.tasks, steps_per_task=arg.steps, examples=arg.examples or None
  )
  return c
