"""GCR's heads (normjax/models/heads.py), the data.classes subset, the configs resnet_gcr /
vit_gcr through the trainer step, and normjax.tools.linear_probe."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from normjax import data as nj_data
from normjax import run, train
from normjax.models import heads, make_model
from normjax.optim import labels
from normjax.tools import linear_probe
from tests import trainer_utils as tu


def numpy_grassmann_logits(x, bases, gamma):
  x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
  return gamma * np.linalg.norm(np.einsum("bd,cdk->bck", x, bases), axis=-1)


def test_grassmann_head_matches_numpy_and_depends_on_the_subspace_only():
  rng = np.random.default_rng(0)
  head = heads.GrassmannHead(12, 4, subspace_dim=3, gamma=25.0, dtype=jnp.float32, rngs=nnx.Rngs(0))
  bases = np.asarray(head.grassmann_basis[...], np.float64)
  np.testing.assert_allclose(
    np.swapaxes(bases, 1, 2) @ bases, np.broadcast_to(np.eye(3), (4, 3, 3)), atol=1e-6
  )
  x = rng.standard_normal((5, 12)).astype(np.float32)
  logits = np.asarray(head(jnp.asarray(x)))
  np.testing.assert_allclose(logits, numpy_grassmann_logits(x, bases, 25.0), rtol=1e-5)
  assert np.all(logits >= 0) and np.all(logits <= 25.0 + 1e-4)
  rotation = np.linalg.qr(rng.standard_normal((4, 3, 3)))[0]
  head.grassmann_basis.value = jnp.asarray(bases @ rotation, jnp.float32)
  np.testing.assert_allclose(np.asarray(head(jnp.asarray(x))), logits, rtol=1e-5, atol=1e-5)


def test_k1_is_absolute_cosine_and_the_cosine_head_is_signed():
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.standard_normal((6, 8)), jnp.float32)
  cosine = heads.CosineHead(8, 3, gamma=10.0, dtype=jnp.float32, rngs=nnx.Rngs(1))
  w = np.asarray(cosine.kernel[...], np.float64)
  xn = np.asarray(x, np.float64) / np.linalg.norm(np.asarray(x), axis=1, keepdims=True)
  want = 10.0 * xn @ (w / np.linalg.norm(w, axis=0))
  np.testing.assert_allclose(np.asarray(cosine(x)), want, rtol=1e-5, atol=1e-5)
  grassmann = heads.GrassmannHead(
    8, 3, subspace_dim=1, gamma=10.0, dtype=jnp.float32, rngs=nnx.Rngs(1)
  )
  grassmann.grassmann_basis.value = jnp.asarray(
    (w / np.linalg.norm(w, axis=0)).T[:, :, None], jnp.float32
  )
  np.testing.assert_allclose(np.asarray(grassmann(x)), np.abs(want), rtol=1e-5, atol=1e-5)


def test_safe_norm_gives_zero_not_nan_gradients():
  bases = jnp.asarray(np.eye(4)[None, :, :2], jnp.float32)  # one class: span(e0, e1)
  loss = lambda x, p: jnp.sum(heads.grassmann_logits(x, p, 25.0))
  for x in (jnp.zeros((1, 4)), jnp.asarray([[0.0, 0.0, 1.0, 2.0]])):  # zero / orthogonal
    gx, gp = jax.grad(loss, argnums=(0, 1))(x, bases)
    assert np.all(np.isfinite(np.asarray(gx))) and np.all(np.isfinite(np.asarray(gp)))
  plain = lambda x, p: jnp.sum(jnp.sqrt(jnp.sum(jnp.square(x @ p[0]), -1)))
  assert not np.all(
    np.isfinite(np.asarray(jax.grad(plain)(jnp.asarray([[0.0, 0.0, 1.0, 2.0]]), bases)))
  )


@pytest.mark.parametrize("name", ["vit", "resnet"])
def test_models_take_each_head_and_label_the_bases(name):
  size = dict(num_classes=5, in_channels=1)
  if name == "vit":
    size.update(image_size=8, patch_size=2, width=16, depth=1, num_heads=2, mlp_dim=16)
  else:
    size.update(stage_sizes=(1,), width=8)
  images = jnp.asarray(np.random.default_rng(2).standard_normal((3, 8, 8, 1)), jnp.float32)
  for head, kwargs in (
    ("linear", None),
    ("cosine", {"gamma": 5.0}),
    ("grassmann", {"subspace_dim": 2}),
  ):
    model = make_model(name, head=head, head_kwargs=kwargs, rngs=nnx.Rngs(0), **size)
    assert model(images).shape == (3, 5)
    params = nnx.state(model, nnx.Param)
    groups = jax.tree.leaves(labels.manifold_groups(params))
    assert groups.count("grassmann") == (head == "grassmann")
    if head == "grassmann":
      assert model.head.grassmann_basis[...].shape == (5, size["width"], 2)
      decays = labels.decay_mask(params)
      assert not decays["head"]["grassmann_basis"].value
  linear = make_model(name, rngs=nnx.Rngs(0), **size)  # the default head is the old Linear
  assert isinstance(linear.head, nnx.Linear)


@pytest.mark.parametrize(
  "key,value,message",
  [
    ("model.head", "softmax", "config key model.head='softmax'"),
    ("model.head_kwargs", {"subspace_dim": 100}, "config key model.head_kwargs.subspace_dim=100"),
    ("model.head_kwargs", {"k": 2}, "config key model.head_kwargs="),
    ("optimizer.groups.grassmann.weight_decay", 1e-4, "weight_decay=0.0001"),
    ("data.classes", (0, 0), "config key data.classes=(0, 0)"),
    ("data.classes", (3, 11), "config key data.classes=(3, 11)"),
  ],
)
def test_bad_settings_fail_with_one_line_naming_the_key(key, value, message):
  config = tu.apply(tu.load_config("resnet_gcr"), {key: value})
  with pytest.raises(ValueError) as info:
    run.build(config, validate=False)
  assert message in str(info.value) and "\n" not in str(info.value), str(info.value)


def test_class_subset_keeps_and_relabels_the_chosen_classes():
  whole = nj_data.get_info(ml_collections.ConfigDict({"name": "digits"}))
  cfg = ml_collections.ConfigDict({"name": "digits", "classes": [7, 2]})
  info = nj_data.get_info(cfg)
  assert info.num_classes == 2 and info.num_train < whole.num_train / 4
  batch = next(iter(nj_data.eval_iterator(cfg, global_batch_size=512)))
  real = batch["mask"] > 0
  assert real.sum() == info.num_eval
  everything = next(
    iter(
      nj_data.eval_iterator(ml_collections.ConfigDict({"name": "digits"}), global_batch_size=512)
    )
  )
  sevens = everything["image"][(everything["label"] == 7) & (everything["mask"] > 0)]
  np.testing.assert_array_equal(batch["image"][real][batch["label"][real] == 0], sevens)
  assert set(np.unique(batch["label"][real])) == {0, 1}


@pytest.mark.parametrize("name,model", [("resnet_gcr", "resnet"), ("vit_gcr", "vit")])
def test_the_configs_train_the_bases_on_the_grassmannian(name, model):
  tiny = tu.overrides(model, 3)
  config, initial, state, metrics = tu.train_steps(name, "k=4", steps=3, **tiny)
  assert config.data.classes == (0, 1, 2, 3, 4)
  assert all(np.isfinite(m["loss"]) for m in metrics)
  before = np.asarray(initial["params"]["head"]["grassmann_basis"])
  after = np.asarray(state["params"]["head"]["grassmann_basis"])
  assert after.shape == (5, before.shape[1], 4) and np.max(np.abs(after - before)) > 1e-4
  np.testing.assert_allclose(
    np.swapaxes(after, 1, 2) @ after, np.broadcast_to(np.eye(4), (5, 4, 4)), atol=1e-5
  )


def test_linear_probe_on_a_run_and_one_line_failures(tmp_path):
  workdir = tmp_path / "run"
  config = tu.apply(tu.load_config("resnet_gcr"), {**tu.overrides("resnet", 4), "model.width": 8})
  train.train_and_evaluate(config, str(workdir))
  result = linear_probe.evaluate(str(workdir), C=1.0)
  assert result["probe_classes"] == [5, 6, 7, 8, 9] and result["train_classes"] == [0, 1, 2, 3, 4]
  assert result["probe_num_test"] == 191 and 0.2 < result["probe_accuracy"] <= 1.0
  assert 0.0 <= result["eval_accuracy"] <= 1.0
  with pytest.raises(ValueError, match="--C=0"):
    linear_probe.evaluate(str(workdir), C=0)
  for args in (["--workdir", str(tmp_path / "missing")],):
    failed = subprocess.run(
      [sys.executable, "-m", "normjax.tools.linear_probe", *args],
      env=tu.env(),
      cwd=tu.ROOT,
      capture_output=True,
      text=True,
      timeout=300,
    )
    lines = [
      line for line in failed.stderr.splitlines() if line.startswith("normjax.tools.linear_probe")
    ]
    assert failed.returncode == 1 and len(lines) == 1, failed.stderr[-2000:]
