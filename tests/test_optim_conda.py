"""Conda against a float64 numpy re-implementation of jie040109/Conda (torch layout)."""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from normjax.optim import labels
from normjax.optim._conda import ScaleByCondaState, conda, resolve_conda_leaves, scale_by_conda
from normjax.optim.labels import MatrixAxes
from tests import optim_harness as harness


class CondaReference:
  """Loop over parameters in torch layout (out, in), conda_torch/conda.py + projector.py
  with proj_type='std', written from the algorithm; step counter starts at 0."""

  def __init__(self, lr_fn, b1, b2, eps, weight_decay, scale, update_proj_gap, conda_names):
    self.__dict__.update(locals())
    self.state = {}

  def step(self, name, p, grad):
    st = self.state.setdefault(name, dict(step=0, m=np.zeros_like(p), v=np.zeros_like(p), q=None))
    t, lr = st["step"], self.lr_fn(st["step"])
    st["m"] = self.b1 * st["m"] + (1 - self.b1) * grad
    m, g = st["m"], grad
    if name in self.conda_names:
      out_features, in_features = p.shape
      right = out_features >= in_features  # torch keeps Vh (n x n) when m >= n
      if st["q"] is None or t % self.update_proj_gap == 0:
        u, _, vh = np.linalg.svd(m, full_matrices=False)
        st["q"] = vh if right else u
      q = st["q"]
      g, m = (g @ q.T, m @ q.T) if right else (q.T @ g, q.T @ m)
    st["v"] = self.b2 * st["v"] + (1 - self.b2) * g * g
    denom = np.sqrt(st["v"]) + self.eps
    step_size = lr * np.sqrt(1 - self.b2 ** (t + 1)) / (1 - self.b1 ** (t + 1))
    n = m / denom
    if name in self.conda_names:
      n = self.scale * (n @ st["q"] if right else st["q"] @ n)
    p = p - step_size * n
    p = p - lr * self.weight_decay * p  # after the step
    st["step"] += 1
    return p


SHAPES = {
  "tall": (4, 6),
  "wide": (6, 4),
  "square": (5, 5),
  "qkv3d": (4, 2, 3),
  "out3d": (2, 3, 4),
  "embed": (7, 3),
  "bias": (6,),
}
SPECS = {
  "tall": MatrixAxes(0, 1),
  "wide": True,
  "square": MatrixAxes(0, 1),
  "qkv3d": MatrixAxes(0, (1, 2)),
  "out3d": MatrixAxes((0, 1), 2),
  "embed": None,
  "bias": False,
}


def as_matrix(name, x):
  """Flax leaf -> (rows = reduction, cols = output) matrix."""
  return x.reshape(int(np.prod(x.shape[:1] if name != "out3d" else x.shape[:2])), -1)


@pytest.mark.parametrize("rotated_momentum", [False, True])
def test_conda_matches_official_algorithm(rotated_momentum):
  rng = np.random.default_rng(0)
  params = {k: rng.normal(size=s) for k, s in SHAPES.items()}
  schedule = optax.linear_schedule(0.02, 0.01, 10)
  kw = dict(b1=0.9, b2=0.99, eps=1e-3, weight_decay=0.1, scale=0.25, update_proj_gap=3)
  tx = conda(schedule, conda_mask=SPECS, rotated_momentum=rotated_momentum, **kw)
  reference = CondaReference(
    lambda t: float(schedule(t)), conda_names={k for k, v in SPECS.items() if v}, **kw
  )
  jax_params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)
  ref = {k: (as_matrix(k, v).T if v.ndim >= 2 else v) for k, v in params.items()}
  state, update = tx.init(jax_params), jax.jit(tx.update)
  for _ in range(8):  # refreshes at counts 0, 3, 6
    grads = {k: rng.normal(size=s) for k, s in SHAPES.items()}
    updates, state = update(
      jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), grads), state, jax_params
    )
    jax_params = optax.apply_updates(jax_params, updates)
    for k, g in grads.items():
      ref[k] = reference.step(k, ref[k], as_matrix(k, g).T if g.ndim >= 2 else g)
  for k, s in SHAPES.items():
    want = ref[k].T.reshape(s) if len(s) >= 2 else ref[k]
    np.testing.assert_allclose(np.asarray(jax_params[k]), want, rtol=1e-5, atol=2e-6, err_msg=k)


def _dot_counts(jaxpr) -> tuple[int, list[int]]:
  """(dot_generals outside any cond, [dot_generals in each branch of the one cond])."""
  outside, branches = 0, []
  for eqn in jaxpr.eqns:
    outside += eqn.primitive.name == "dot_general"
    if eqn.primitive.name == "cond":
      branches = [_dot_counts(b.jaxpr)[0] for b in eqn.params["branches"]]
  return outside, branches


def test_rotated_momentum_saves_one_matmul_per_plain_step():
  """Per Conda leaf, the cond's (plain, refresh) branches: official (2, 2): rotate M and G;
  rotated momentum (1, 3): rotate G / back-rotate M, rotate M and G. The step's
  back-rotation (1) is outside: a plain step costs 3 matmuls, or 2."""
  params = {"w": jnp.ones((4, 6)), "v": jnp.ones((6, 4)), "b": jnp.ones((6,))}
  counts = {}
  for rotated in (False, True):
    tx = scale_by_conda(rotated_momentum=rotated)
    counts[rotated] = _dot_counts(jax.make_jaxpr(tx.update)(params, tx.init(params), params).jaxpr)
  assert counts == {False: (2, [4, 4]), True: (2, [2, 6])}, counts


def test_basis_is_square_orthogonal_and_refreshed_every_t_steps():
  rng = np.random.default_rng(1)
  params = {
    "a": jnp.asarray(rng.normal(size=(3, 8)), jnp.float32),
    "b": jnp.asarray(rng.normal(size=(8, 3)), jnp.float32),
    "c": jnp.zeros((4,)),
  }
  tx = scale_by_conda(update_proj_gap=4)
  state, update = tx.init(params), jax.jit(tx.update)
  bases = []
  for _ in range(9):
    grads = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), jnp.float32), params)
    _, state = update(grads, state, params)
    bases.append(state.basis)
  assert bases[0]["a"].shape == (3, 3) and bases[0]["b"].shape == (3, 3)
  assert isinstance(bases[0]["c"], optax.MaskedNode)  # no array: orbax cannot save empty ones
  for step, basis in enumerate(bases):
    for k in ("a", "b"):
      q = np.asarray(basis[k], np.float64)
      np.testing.assert_allclose(q.T @ q, np.eye(3), atol=1e-5)
      changed = not np.allclose(basis[k], bases[step - 1][k]) if step else True
      assert changed == (step % 4 == 0), (k, step)  # refreshed at counts 0, 4, 8


def test_identity_basis_reduces_to_adamw_path():
  """A Conda leaf with basis = I and scale = 1 gets exactly the plain (AdamW) update."""
  rng = np.random.default_rng(2)
  w = jnp.asarray(rng.normal(size=(4, 6)), jnp.float32)
  params, grads = {"w": w}, {"w": jnp.asarray(rng.normal(size=(4, 6)), jnp.float32)}
  mu = {"w": jnp.asarray(rng.normal(size=(4, 6)), jnp.float32)}
  nu = {"w": jnp.asarray(rng.uniform(size=(4, 6)), jnp.float32)}
  count = jnp.asarray(5, jnp.int32)  # not a refresh step with update_proj_gap=100
  rotated = scale_by_conda(update_proj_gap=100)
  plain = scale_by_conda(update_proj_gap=100, conda_mask={"w": False})
  u_rot, s_rot = rotated.update(grads, ScaleByCondaState(count, mu, nu, {"w": jnp.eye(4)}), params)
  u_plain, s_plain = plain.update(
    grads, ScaleByCondaState(count, mu, nu, {"w": jnp.zeros((0, 0))}), params
  )
  np.testing.assert_allclose(u_rot["w"], u_plain["w"], rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(s_rot.nu["w"], s_plain.nu["w"], rtol=1e-6)
  # and the AdamW path is HF AdamW: eps before the bias correction, written out here
  m = 0.9 * np.asarray(mu["w"], np.float64) + 0.1 * np.asarray(grads["w"], np.float64)
  v = 0.999 * np.asarray(nu["w"], np.float64) + 0.001 * np.asarray(grads["w"], np.float64) ** 2
  want = np.sqrt(1 - 0.999**6) / (1 - 0.9**6) * m / (np.sqrt(v) + 1e-8)
  np.testing.assert_allclose(u_plain["w"], want, rtol=1e-5)


def test_masks_and_errors():
  params = {
    "attn": {"kernel": jnp.ones((4, 4)), "bias": jnp.ones((4,))},
    "embed": jnp.ones((9, 4)),
    "conv": jnp.ones((3, 3, 2, 4)),
  }
  leaves = lambda mask: [m is not None for m in resolve_conda_leaves(mask, params)[0]]
  order = [labels.path_names(p)[-1] for p, _ in jax.tree_util.tree_leaves_with_path(params)]
  assert order == ["bias", "kernel", "conv", "embed"]
  assert leaves(None) == [False, True, False, True]  # every 2-D leaf
  assert leaves("attention_mlp_kernels") == [False, True, False, False]
  with pytest.raises(ValueError, match="MatrixAxes"):
    scale_by_conda(conda_mask=lambda p: jax.tree.map(lambda x: x.ndim >= 2, p)).init(params)
  with pytest.raises(ValueError, match="every axis"):
    scale_by_conda(
      conda_mask={"attn": {"kernel": MatrixAxes(0, 0), "bias": None}, "embed": None, "conv": None}
    ).init(params)
  with pytest.raises(ValueError, match="update_proj_gap"):
    conda(1e-3, update_proj_gap=0)
  with pytest.raises(KeyError, match="known"):
    scale_by_conda(conda_mask="no_such_label").init(params)


OPTIMIZERS = {
  "conda": (conda, dict(learning_rate=1e-2)),
  "conda_wd": (conda, dict(learning_rate=1e-2, weight_decay=1e-4, scale=0.5, update_proj_gap=3)),
}


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_extra_args_and_no_recompile(name):
  factory, kw = OPTIMIZERS[name]
  harness.check_extra_args_and_no_recompile(factory(**kw))


@pytest.mark.parametrize("target", list(harness.TARGETS))
def test_convergence(target):
  harness.check_convergence(conda(1e-2, update_proj_gap=200), target)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_inject_hyperparams(name):
  factory, kw = OPTIMIZERS[name]
  params = {
    "w": jnp.arange(6.0).reshape(2, 3) * 0.3 - 1.0,
    "k": jnp.ones((2, 5, 2)),
    "b": jnp.ones((3,)),
  }
  grads = {
    "w": jnp.asarray([[1.0, 0.5, -1.0], [-1.0, 2.0, 1.0]]),
    "k": -jnp.ones((2, 5, 2)),
    "b": jnp.ones((3,)),
  }
  harness.check_inject_hyperparams(
    factory, kw, params, grads, steps=4, static_args=("update_proj_gap", "conda_mask")
  )


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_dtypes_multisteps_and_cond(dtype):
  factory, kw = OPTIMIZERS["conda_wd"]
  harness.check_preserve_dtype(factory(**kw), dtype)
  harness.check_multisteps(factory(**kw), dtype)
  harness.check_state_stable_under_cond(factory(**kw), dtype)


def test_bfloat16_momentum_with_float32_params():
  tx = conda(1e-2, mu_dtype="bfloat16")
  harness.check_preserve_dtype(tx, "float32")
  assert tx.init(harness.dtype_params("float32"))[0].mu["w"].dtype == jnp.bfloat16


def test_registered_and_importable():
  from normjax.optim import OPTIMIZERS as registry

  module = importlib.import_module("normjax.optim._conda")
  assert registry.get("conda") is module.conda
  tx = registry.get("conda")(
    1e-3, weight_decay=0.1, weight_decay_mask=labels.decay_mask, conda_mask="attention_mlp_kernels"
  )
  params = {"attn": {"kernel": jnp.ones((2, 3))}, "bias": jnp.ones((3,))}
  _, state = tx.update(params, tx.init(params), params)
  assert state[0].basis["attn"]["kernel"].shape == (2, 2)
