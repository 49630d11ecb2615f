"""normjax.optim's layout: private modules re-exported by name, one registration step, and
the shared mask resolution every optimizer reads its masks with."""

import importlib
import importlib.util
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import optax
import pytest

from normjax import optim
from normjax.optim import _transforms, labels
from normjax.optim.labels import MatrixAxes


def test_public_names_are_the_functions_and_shadow_no_module():
  from normjax.optim import (  # noqa: F401
    adamp,
    conda,
    nap,
    normalize_and_project,
    scale_by_adamp,
    scale_by_conda,
    scale_by_sgdp,
    sgdp,
  )

  for fn in (adamp, sgdp, conda, nap, scale_by_adamp, scale_by_sgdp, scale_by_conda):
    assert isinstance(fn, types.FunctionType), fn
  for name in optim.__all__:
    value = getattr(optim, name)
    if not isinstance(value, types.ModuleType):  # no module hides behind a function
      assert importlib.util.find_spec(f"normjax.optim.{name}") is None, name
  # the public modules other code imports
  assert importlib.import_module("normjax.optim.build").make_optimizer
  assert importlib.import_module("normjax.optim.labels") is labels


def test_importing_the_package_registers_everything():
  """A fresh interpreter: ``import normjax.optim`` alone registers every optimizer, and
  the registry has no lazy-module list to keep in sync."""
  code = (
    "import normjax.optim as o; assert not o.OPTIMIZERS._lazy_modules; "
    "print(','.join(sorted(o.OPTIMIZERS._entries)))"
  )
  out = (
    subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    .stdout.strip()
    .split(",")
  )
  assert {"adamp", "sgdp", "conda", "nap", "adamw", "sgd", "muon"} <= set(out), out
  for name in ("adamp", "sgdp", "conda", "nap"):
    assert optim.OPTIMIZERS.get(name) is getattr(optim, name)


PARAMS = {
  "block": {"kernel": jnp.ones((3, 4)), "bias": jnp.ones((4,))},
  "head": jnp.ones((4, 2)),
  "norm": {"scale": jnp.ones((4,))},
}


def test_resolve_mask_forms():
  resolve = lambda mask, **kw: _transforms.resolve_mask(mask, PARAMS, name="m", **kw)
  flat = jax.tree.structure(PARAMS).flatten_up_to
  # leaf order: block/bias, block/kernel, head, norm/scale
  assert flat(resolve(None)) == [True] * 4
  assert flat(resolve("decay")) == [False, True, True, False]
  assert flat(resolve(labels.matrices)) == [False, True, True, False]
  prefix = {"block": False, "head": True, "norm": None}  # a prefix tree: whole subtrees
  assert flat(resolve(prefix)) == [False, False, True, None]
  specs = resolve({"block": {"kernel": MatrixAxes(0, 1), "bias": None}, "head": None, "norm": None})
  assert flat(specs) == [None, MatrixAxes(0, 1), None, None]
  assert flat(_transforms.bool_mask(prefix, PARAMS, name="m")) == [False, False, True, False]
  with pytest.raises(ValueError, match="m must have the structure of params"):
    resolve({"block": True})
  with pytest.raises(KeyError, match="known"):
    resolve("no_such_label")


@pytest.mark.parametrize(
  "factory",
  [
    lambda mask: optim.adamp(0.1, weight_decay=1.0, weight_decay_mask=mask),
    lambda mask: optim.sgdp(0.1, weight_decay=1.0, weight_decay_mask=mask),
    lambda mask: optim.conda(0.1, weight_decay=1.0, weight_decay_mask=mask, conda_mask=mask),
    lambda mask: optax.chain(optax.sgd(0.1), optim.normalize_and_project(mask)),
  ],
)
def test_every_optimizer_reads_a_prefix_mask(factory):
  """The same prefix mask gives the same result as the full tree it stands for."""
  prefix = {"block": False, "head": True, "norm": False}
  full = {"block": {"kernel": False, "bias": False}, "head": True, "norm": {"scale": False}}
  grads = jax.tree.map(lambda x: 0.5 * jnp.ones_like(x), PARAMS)
  results = []
  for mask in (prefix, full):
    tx = factory(mask)
    results.append(tx.update(grads, tx.init(PARAMS), PARAMS)[0])
  for a, b in zip(jax.tree.leaves(results[0]), jax.tree.leaves(results[1])):
    assert jnp.array_equal(a, b)
  with pytest.raises(ValueError, match="structure of params"):
    tx = factory({"block": True})
    tx.update(grads, tx.init(PARAMS), PARAMS)
