"""The norms package contract: a leaf, one base with the traits, discovery, the stateful base."""

import ast
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from normjax import norms
from normjax.models import make_model
from normjax.norms import base
from normjax.state import ModelDef
from normjax.variables import GradStat

NORMS_DIR = os.path.dirname(norms.__file__)
FORBIDDEN = ("normjax.state", "normjax.train", "normjax.optim", "normjax.models", "normjax.surgery")
TRAITS = {
  "uses_batch_statistics": False,
  "needs_site": False,
  "compressed_residual": False,
  "separate_value_path": False,
  "fuses_activation": False,
  "records_aux_loss": False,
  "needs_tokens": False,
  "needs_task_ids": False,
  "eval_affine": None,
}
C = 8


def test_no_module_of_the_package_imports_a_wing_above_it():
  for name in sorted(os.listdir(NORMS_DIR)):
    if not name.endswith(".py"):
      continue
    tree = ast.parse(open(os.path.join(NORMS_DIR, name)).read())
    for node in ast.walk(tree):
      modules = (
        [a.name for a in node.names]
        if isinstance(node, ast.Import)
        else [node.module or ""]
        if isinstance(node, ast.ImportFrom)
        else []
      )
      for module in modules:
        assert not module.startswith(FORBIDDEN), f"normjax/norms/{name} imports {module}"


def test_importing_every_norm_loads_nothing_above_the_package():
  code = (
    "import sys, normjax.norms as n; n.NORMS.names(); [getattr(n, a) for a in dir(n)]; "
    f"bad = [m for m in sys.modules if m.startswith({FORBIDDEN!r})]; "
    "assert not bad, bad"
  )
  env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(NORMS_DIR))}
  subprocess.run([sys.executable, "-c", code], check=True, env=env)


def test_traits_are_declared_once_on_the_base_and_every_norm_inherits_it():
  for trait, default in TRAITS.items():
    assert trait in vars(base.Norm) and vars(base.Norm)[trait] is default, trait
  assert "records_aux_loss" not in vars(base.StatefulNorm)
  for name in norms.NORMS.names():
    cls = norms.NORMS.get(name)
    assert issubclass(cls, base.Norm), name
    for trait in TRAITS:
      getattr(cls, trait)  # no default needed
  with pytest.raises(TypeError, match="not a subclass of normjax.norms.base.Norm"):
    norms.register("not_a_norm")(nnx.Module)
  assert "not_a_norm" not in norms.NORMS


def test_submodules_are_discovered_and_public_names_come_from_their_all():
  on_disk = {f[:-3] for f in os.listdir(NORMS_DIR) if f.endswith(".py") and f[0] != "_"}
  assert set(norms._SUBMODULES) == on_disk
  import importlib

  for module_name in on_disk:
    module = importlib.import_module(f"normjax.norms.{module_name}")
    for public in set(getattr(module, "__all__", ())) - on_disk:  # ``ibn``: the module wins
      assert getattr(norms, public) is getattr(module, public), public
  assert norms.PowerNorm is norms.powernorm.PowerNorm and callable(norms.power_norm)
  with pytest.raises(AttributeError, match="no attribute 'NoSuchNorm'"):
    norms.NoSuchNorm


def test_a_fresh_process_finds_submodules_and_names_by_attribute_alone():
  """Nothing imported beforehand: the package discovers its files on first access."""
  names = sorted(f[:-3] for f in os.listdir(NORMS_DIR) if f.endswith(".py") and f[0] != "_")
  code = (
    "import types, normjax.norms as n; "
    f"assert all(isinstance(getattr(n, m), types.ModuleType) for m in {names!r}); "
    "assert n.UnifiedNorm.__module__ == 'normjax.norms.unified'; "
    "assert n.NORMS.get('evonorm_s1') is n.EvoNormS1"
  )
  for first in ("n.PowerNorm", "n.NORMS.get('ibn')", "n.make_norm"):
    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(NORMS_DIR))}
    subprocess.run(
      [sys.executable, "-c", code.replace("; ", f"; {first}; ", 1)], check=True, env=env
    )


def _stateful():
  out = []
  for name in norms.NORMS.names():
    cls = norms.NORMS.get(name)
    if issubclass(cls, base.StatefulNorm):
      out.append(name)
  return out


@pytest.mark.parametrize("name", _stateful())
def test_stateful_norms_declare_their_state_and_the_base_writes_it_back(name):
  kwargs = {"num_groups": 4} if name == "batch_channel_norm" else {}
  norm = norms.make_norm(name, C, rngs=nnx.Rngs(0), **kwargs)
  declared_grad = {n for n in norm.grad_stat_variables if getattr(norm, n) is not None}
  declared = {n for n in norm.state_variables if getattr(norm, n) is not None}
  grad_stats = set(nnx.state(norm, GradStat).keys())
  batch_stats = set(nnx.state(norm, nnx.BatchStat).keys()) - grad_stats
  assert (declared, declared_grad) == (batch_stats, grad_stats)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 3, 3, C)) + 1.0, jnp.float32)
  old = norm.state_dict()
  _, expected = type(norm).function(
    x, norm.params(), old, train=True, mask=None, **norm.function_kwargs()
  )
  norm(x)
  for n in declared:
    np.testing.assert_array_equal(getattr(norm, n)[...], expected[n], err_msg=n)
  assert any(not np.array_equal(getattr(norm, n)[...], old[n]) for n in declared)
  for n in declared_grad:  # the backward pass owns these
    np.testing.assert_array_equal(getattr(norm, n)[...], old[n])
  trained = norm.state_dict()
  norm.eval()
  norm(x)
  for n, value in norm.state_dict().items():
    np.testing.assert_array_equal(value, trained[n], err_msg=n)


VIT = dict(
  num_classes=3,
  image_size=4,
  in_channels=1,
  patch_size=2,
  width=8,
  depth=1,
  num_heads=2,
  mlp_dim=16,
)


def test_has_aux_loss_comes_from_the_graph_for_every_model():
  def model_def(name, weight, **kwargs):
    return ModelDef.create(
      lambda rngs: make_model(
        name, rngs=rngs, norm="fakeln", norm_kwargs={"aux_loss_weight": weight}, **kwargs
      )
    )

  assert model_def("vit", 0.1, **VIT).has_aux_loss
  assert not model_def("vit", 0.0, **VIT).has_aux_loss
  gpt2 = dict(vocab_size=11, max_len=4, width=8, depth=1, num_heads=2)
  assert model_def("gpt2", 0.1, **gpt2).has_aux_loss
  assert not hasattr(make_model("gpt2", rngs=nnx.Rngs(0), **gpt2), "has_aux_loss")


def test_one_batchnorm_momentum_per_ibn_resnet():
  common = dict(num_classes=3, in_channels=1, stage_sizes=(1, 1), width=8, norm="batchnorm")
  for variant in ("a", "b"):
    for kwargs, momentum in (({}, 0.99), ({"momentum": 0.9}, 0.9)):
      model = nnx.eval_shape(
        lambda: make_model("resnet", ibn=variant, norm_kwargs=kwargs, rngs=nnx.Rngs(0), **common)
      )
      momenta = {
        node.momentum
        for _, node in nnx.iter_graph(model)
        if isinstance(node, (norms.BatchNorm, norms.IBN))
      }
      assert momenta == {momentum}, (variant, kwargs, momenta)


def test_alpha_bn_is_not_folded_as_a_batchnorm():
  from normjax.surgery.folding import fold_norms

  model = nnx.eval_shape(
    lambda: make_model(
      "gpt2",
      vocab_size=11,
      max_len=4,
      width=8,
      depth=1,
      num_heads=2,
      norm="alpha_bn",
      rngs=nnx.Rngs(0),
    )
  )
  with pytest.raises(ValueError, match="AlphaBatchNorm normalizes"):
    fold_norms(model)
  assert norms.BatchNorm.eval_affine is not None and norms.AlphaBatchNorm.eval_affine is None


def test_batchnorm_eval_affine_is_its_eval_forward():
  norm = norms.make_norm("batchnorm", C, rngs=nnx.Rngs(0))
  rng = np.random.default_rng(3)
  for n in ("scale", "bias", "mean"):
    getattr(norm, n)[...] = jnp.asarray(rng.normal(size=C), jnp.float32)
  norm.var[...] = jnp.asarray(rng.uniform(0.5, 2, C), jnp.float32)
  norm.eval()
  x = jnp.asarray(rng.normal(size=(5, C)), jnp.float32)
  a, c = norm.eval_affine()
  np.testing.assert_allclose(norm(x), a * x + c, rtol=1e-6, atol=1e-6)
  jax.block_until_ready(a)
