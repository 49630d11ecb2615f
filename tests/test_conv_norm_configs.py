"""The convolutional-norm configs train: a few jitted steps of the trainer's own update step
(``run.Setup.train_step``) on real batches, on one device at the configs' micro-batch sizes.
(Full trainer runs of a BatchNorm ResNet: tests/test_alpha_bn.py, tests/test_train.py.)"""

import jax
import numpy as np
import pytest

from normjax import data as nj_data
from normjax.optim.labels import is_norm_param
from normjax.tasks import TASKS
from tests import trainer_utils as tu

SMALL = {"model.width": 8, "model.stage_sizes": (1, 1)}


def _moved(before, after):
  return jax.tree_util.tree_map_with_path(
    lambda path, a, b: (is_norm_param(path), not np.array_equal(np.asarray(a), np.asarray(b))),
    before,
    after,
  )


@pytest.mark.parametrize(
  "name,arg",
  [
    ("resnet_evonorm", "norm=evonorm_s0,batch=2"),
    ("resnet_bcn_ws", "batch=2,estimated=True,groups=4"),
    ("resnet_nf", "batch=1"),  # FedWon's batch size 1
  ],
)
def test_micro_batch_configs_train(name, arg):
  config, initial, state, metrics = tu.train_steps(name, arg, **SMALL)
  assert config.batch_size <= 2 and config.total_steps == 4000
  assert config.optimizer.learning_rate == pytest.approx(0.1 * config.batch_size / 32)
  assert all(np.isfinite(m["loss"]) and m["grad_norm"] > 0 for m in metrics)
  moved = jax.tree.leaves(
    _moved(initial["params"], state["params"]), is_leaf=lambda x: isinstance(x, tuple)
  )
  assert sum(m for _, m in moved) > len(moved) // 2
  if name == "resnet_nf":
    assert config.adaptive_grad_clip > 0 and not config.grad_clip_norm
    assert not jax.tree.leaves(state["model_state"])  # no running statistics at all
  if name == "resnet_bcn_ws":  # EstBN statistics move every step
    assert not np.array_equal(
      jax.tree.leaves(initial["model_state"])[0], jax.tree.leaves(state["model_state"])[0]
    )


def test_bn_only_config_trains_norm_affine_and_nothing_else():
  config, initial, state, _ = tu.train_steps("resnet_bn_only", **SMALL)
  assert config.trainable == "norm_affine"
  moved = jax.tree.leaves(
    _moved(initial["params"], state["params"]), is_leaf=lambda x: isinstance(x, tuple)
  )
  norm, other = [m for is_norm, m in moved if is_norm], [m for is_norm, m in moved if not is_norm]
  assert other and not any(other), "a conv or the head moved"
  assert norm and all(norm), "every BatchNorm scale/bias should train"
  assert tu.load_config("resnet_bn_only", "trainable=all").trainable is None


def test_ibn_config_trains():
  config, _, _, metrics = tu.train_steps(
    "resnet_ibn", "variant=a", steps=1, **{"model.width": 8, "model.stage_sizes": (2, 1)}
  )
  assert config.model.ibn == "a" and np.isfinite(metrics[-1]["loss"])
  assert tu.load_config("resnet_ibn", "variant=b").model.ibn == "b"
  with pytest.raises(ValueError, match="variant='c'"):
    tu.load_config("resnet_ibn", "variant=c")


def test_inpaint_config_trains():
  config, _, state, metrics = tu.train_steps(
    "inpaint_regionnorm", steps=2, **{"model.width": 8, "model.num_blocks": 1}
  )
  assert np.isfinite(metrics[-1]["loss"]) and metrics[-1]["psnr"] > 0
  assert not jax.tree.leaves(state["model_state"])  # Region Norm keeps no running statistics
  info = nj_data.get_info(config.data)
  line = TASKS.get(info.task).summary({"eval_psnr": 20.0, "eval_loss": 0.1}, info)
  assert line.startswith("final test PSNR 20.00 dB")
  baseline = tu.load_config("inpaint_regionnorm", "norm=instancenorm").model
  assert (baseline.norm, baseline.decoder_norm) == ("instancenorm", "instancenorm")
