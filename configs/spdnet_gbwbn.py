r"""SPDNet on covariance descriptors of the digits, with Riemannian batch norm (GBW-RBN).

  python -m normjax.train --config configs/spdnet_gbwbn.py --workdir /tmp/spd_gbw
  python -m normjax.train --config configs/spdnet_gbwbn.py:bn=airm,cond=ill --workdir /tmp/spd_airm
  # arguments: bn=none|airm|bw|gbw, theta (bw/gbw power), cond=well|ill (spectrum as is + ridge
  # 1e-3 | eigenvalues cubed + ridge 1e-7: condition numbers up to ~3e6),
  # grad=official|bw (SPD-parameter gradient), official=True (the official defects: power-map
  # gradient with 1/theta, frozen BiMap), dtype=float32|float64 (float64 needs JAX_ENABLE_X64=1)

Data ``spd_digits`` (``normjax/data/spd_digits.py``: one 5x5 covariance of per-pixel position,
intensity and gradient features per image). Model ``normjax/models/spdnet.py``: BiMap 5->5
(trained on the Stiefel manifold), the batch norm, ReEig (1e-5), LogEig, Linear(25->10). The
official SPDNet recipe: SGD with momentum 0.9 on the Euclidean parameters, Riemannian SGD on the
SPD ones (``spd_rsgd``: bias, GBW metric) and the Stiefel ones (``stiefel_rsgd``), one
learning rate, batch 30; here lr 0.02 constant, 1000 steps (~21 epochs).

Measured (this default, float32, 10 seeds): test accuracy 0.6292 ± 0.0077 (AIRM 0.6290, BW
0.6426, no BN 0.5891); details in experiments/gbw_rbn/README.md.
"""

from normjax.config_args import check_choice, parse_arg, trainer_defaults

CONDITIONING = {"well": (1.0, 1e-3), "ill": (3.0, 1e-7)}  # (spectral power, ridge)


def get_config(arg=None):
  arg = parse_arg(
    arg, bn="gbw", theta=1.0, cond="well", grad="official", official=False, dtype="float32"
  )
  check_choice(arg, "bn", ("none", "airm", "bw", "gbw"))
  check_choice(arg, "cond", tuple(CONDITIONING))
  check_choice(arg, "grad", ("official", "bw"))
  c = trainer_defaults(total_steps=1000, batch_size=30)
  c.eval_batch_size = 128
  c.grad_clip_norm = None
  c.schedule.warmup_steps = 0
  c.schedule.decay = "constant"
  power, ridge = CONDITIONING[arg.cond]
  c.data = dict(name="spd_digits", regularization=ridge, spectral_power=power)
  c.model = dict(
    name="spdnet",
    spd_norm=arg.bn,
    theta=arg.theta,
    official_power_grad=arg.official,
    freeze_bimap=arg.official,
    dtype=arg.dtype,
  )
  c.optimizer = dict(
    name="sgd",
    learning_rate=0.02,
    weight_decay=0.0,
    labels="manifold_groups",
    groups={
      "euclidean": {"name": "sgd", "momentum": 0.9},
      "spd": {"name": "spd_rsgd", "gradient": arg.grad},
      "stiefel": {"name": "stiefel_rsgd"},
    },
  )
  return c
