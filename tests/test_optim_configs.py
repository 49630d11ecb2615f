"""The optimizer configs of issue 4: they train with the trainer's own step, route the
right leaves to each optimizer, checkpoint and resume, and their controls are exactly the
baselines."""

import shutil

import jax
import numpy as np
import optax
import pytest

from normjax import train
from normjax.optim import ScaleByCondaState
from normjax.optim.labels import param_names
from tests import trainer_utils as tu

TINY_GPT2 = {
  **{k: v for k, v in tu.TINY["gpt2"].items() if "eval" not in k},
  "schedule.warmup_steps": 0,
}
SMALL_RESNET = {
  "model.width": 8,
  "model.stage_sizes": (1, 1),
  "batch_size": 16,
  "schedule.warmup_steps": 0,
}
SMALL_VIT = {
  **{k: v for k, v in tu.TINY["vit"].items() if "eval" not in k},
  "schedule.warmup_steps": 0,
}
CONFIGS = [
  ("gpt2_adamw", TINY_GPT2),
  ("gpt2_conda", TINY_GPT2),
  ("gpt2_muon", TINY_GPT2),
  ("resnet_adamp", SMALL_RESNET),
  ("resnet_sgdp", SMALL_RESNET),
  ("vit_adamp", SMALL_VIT),
]


def _names_moved(before, after):
  return {
    "/".join(param_names(p)): not np.array_equal(np.asarray(a), np.asarray(b))
    for (p, a), b in zip(jax.tree_util.tree_leaves_with_path(before), jax.tree.leaves(after))
  }


@pytest.mark.parametrize("name,small", CONFIGS)
def test_optimizer_configs_train_every_leaf(name, small):
  config, initial, state, metrics = tu.train_steps(name, steps=2, **small)
  assert all(np.isfinite(m["loss"]) for m in metrics)
  moved = _names_moved(initial["params"], state["params"])
  assert all(moved.values()), [k for k, v in moved.items() if not v]


def _states(tree, cls):
  is_cls = lambda x: isinstance(x, cls)
  return [s for s in jax.tree.leaves(tree, is_leaf=is_cls) if is_cls(s)]


def test_gpt2_conda_rotates_exactly_the_attention_and_mlp_kernels():
  _, _, state, _ = tu.train_steps("gpt2_conda", steps=1, **TINY_GPT2)
  (conda_state,) = _states(state["opt_state"], ScaleByCondaState)
  rotated = {
    "/".join(param_names(p))
    for p, b in jax.tree_util.tree_leaves_with_path(conda_state.basis)
    if b.size
  }
  block = "transformer/blocks/0"
  assert rotated == {
    f"{block}/attn/qkv/kernel",
    f"{block}/attn/proj/kernel",
    f"{block}/mlp/fc1/kernel",
    f"{block}/mlp/fc2/kernel",
  }, rotated


def test_gpt2_muon_groups_and_shared_learning_rate():
  config = tu.load_config("gpt2_muon")
  assert config.optimizer.labels == "muon_groups"
  # both groups share the top-level (swept) peak learning rate, as the official recipe
  assert all("learning_rate" not in g for g in config.optimizer.groups.values())
  assert config.optimizer.groups.muon.consistent_rms == 0.2
  _, _, state, _ = tu.train_steps("gpt2_muon", steps=1, **TINY_GPT2)
  partition = _states(state["opt_state"], optax.transforms.PartitionState)
  assert partition, "muon_groups should partition the optimizer state"
  muon_state = partition[0].inner_states["muon"]
  muon_leaves = [
    p
    for p, x in jax.tree_util.tree_leaves_with_path(muon_state)
    if hasattr(x, "shape") and x.ndim == 2
  ]
  names = {"/".join(param_names(p)[-3:]) for p in muon_leaves}
  assert "attn/qkv/kernel" in names and not any("embed" in n for n in names), names


def test_control_variants_are_the_baselines():
  assert tu.load_config("resnet_sgdp", "optimizer=sgd") == tu.load_config("resnet_batchnorm")
  assert tu.load_config("vit_adamp", "optimizer=adamw") == tu.load_config("vit_layernorm")
  adamp, adamw = (tu.load_config("resnet_adamp", f"optimizer={o}") for o in ("adamp", "adamw"))
  assert {
    k: v for k, v in adamp.optimizer.items() if k not in ("name", "delta", "wd_ratio", "nesterov")
  } == {k: v for k, v in adamw.optimizer.items() if k != "name"}
  with pytest.raises(ValueError, match="optimizer='sgd'"):
    tu.load_config("resnet_adamp", "optimizer=sgd")
  base = tu.load_config("gpt2_layernorm")
  for name in ("gpt2_adamw", "gpt2_conda", "gpt2_muon"):
    c = tu.load_config(name)
    assert (c.model, c.data, c.schedule, c.total_steps, c.batch_size) == (
      base.model,
      base.data,
      base.schedule,
      base.total_steps,
      base.batch_size,
    ), name


def _channel_cosines(delta, weight):
  """|cos(delta, weight)| of each output channel that moved."""
  d, w = (x.reshape(-1, weight.shape[-1]) for x in (delta, weight))
  moved = np.linalg.norm(d, axis=0) > 0
  d, w = d[:, moved], w[:, moved]
  return np.abs(np.sum(d * w, 0)) / (np.linalg.norm(d, axis=0) * np.linalg.norm(w, axis=0))


@pytest.mark.parametrize("optimizer", ["adamp", "adamw"])
def test_resnet_adamp_projects_the_bn_fed_convolutions(optimizer):
  """One step without weight decay: AdamP's change of every conv kernel (each feeds a
  BatchNorm) is orthogonal to the kernel channel by channel; AdamW's is not."""
  _, initial, state, _ = tu.train_steps(
    "resnet_adamp",
    f"optimizer={optimizer}",
    steps=1,
    **{**SMALL_RESNET, "optimizer.weight_decay": 0.0, "model.zero_init_residual": False},
  )
  convs = [
    (p, np.asarray(a, np.float64), np.asarray(b, np.float64))
    for (p, a), b in zip(
      jax.tree_util.tree_leaves_with_path(initial["params"]), jax.tree.leaves(state["params"])
    )
    if a.ndim == 4
  ]
  cosines = np.concatenate([_channel_cosines(b - a, a) for _, a, b in convs])
  assert len(convs) >= 5 and cosines.size >= 64
  worst = float(cosines.max())
  if optimizer == "adamp":
    assert worst < 1e-3, worst
  else:
    assert worst > 0.05, worst


@pytest.mark.parametrize(
  "name,model", [("gpt2_conda", "gpt2"), ("gpt2_muon", "gpt2"), ("resnet_sgdp", "resnet")]
)
def test_optimizer_state_checkpoints_and_resumes_bitwise(name, model, tmp_path):
  """Through the trainer: 3 steps straight == 2 steps, restore from the checkpoint, 1 more
  (the Conda basis is refreshed at count 2, after the restore)."""
  extra = {"optimizer.update_proj_gap": 2} if name == "gpt2_conda" else {}
  config = tu.apply(tu.load_config(name), tu.overrides(model, 3, checkpoint_every=2, **extra))
  train.train_and_evaluate(config, str(tmp_path))
  assert tu.checkpoint_steps(tmp_path) == [2, 3]
  straight = tu.restore_state(tmp_path, 3)
  shutil.rmtree(tmp_path / "checkpoints" / "3")
  train.train_and_evaluate(config, str(tmp_path))
  resumed = tu.restore_state(tmp_path, 3)
  for a, b in zip(tu.leaves(straight), tu.leaves(resumed)):
    np.testing.assert_array_equal(a, b)
  assert len(tu.leaves(straight["opt_state"])) > len(tu.leaves(straight["params"]))
