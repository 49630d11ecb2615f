"""MIP hypernetworks (arXiv 2304.07645, JJGO/hyperlight a3e2108): the encodings, theta(gamma)
against NumPy float64 restatements for MIP, the plain default and the ablations, hyperlight's
initialisation statistics, the primary network run on predicted parameters against the NNX
module holding them, a resumed run through the trainer, the lambda-grid command, bad
arguments. With ``hyperlight`` importable (pip install hyperlight), also the forward of the
official torch ``HyperNet`` loaded with the same weights."""

import re
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from normjax import run, train
from normjax.models import hypernet, lambda_hypernet, make_model
from normjax.tasks import classify_and_reconstruct
from normjax.tools import hypernet_eval
from tests import trainer_utils as tu

ARMS = {  # configs/hypernet_mip.py: (encoding, init_independent_weights, output_split_init)
  "mip": ("cos|sin", True, True),
  "default": ("none", False, False),
  "encoding_only": ("cos|sin", False, False),
  "theta0_only": ("none", True, True),
  "z|1-z": ("z|1-z", True, False),
}
# The primary's parameters in jax.tree order of its nnx.Param state (sorted names).
ORDER = [(m, p) for m in ("decoder", "head", "hidden") for p in ("bias", "kernel")]


def build(arm="mip", seed=0, dtype="float32", hidden_sizes=(16, 64, 128), primary_hidden=32):
  encoding, independent, split = ARMS[arm]
  return make_model(
    "lambda_hypernet",
    rngs=nnx.Rngs(seed),
    num_classes=10,
    image_size=8,
    in_channels=1,
    primary_hidden=primary_hidden,
    hidden_sizes=hidden_sizes,
    encoding=encoding,
    init_independent_weights=independent,
    output_split_init=split,
    dtype=dtype,
  )


def np_encode(z, mode):
  if mode == "cos|sin":
    return np.concatenate([np.cos(np.pi * z / 2), np.sin(np.pi * z / 2)], -1)
  return np.concatenate([z, 1 - z], -1) if mode == "z|1-z" else z


def leaky(x):
  return np.where(x >= 0, x, 0.01 * x)


def np_theta(model, gamma, mode):
  """theta_0 + W h(e(gamma)) for gamma (G, 1) in NumPy float64: {(module, name): (G, ...)}."""
  hn = model.hypernet
  h = np_encode(np.asarray(gamma, np.float64), mode)
  for layer in hn.hidden:
    h = leaky(h @ np.asarray(layer.kernel[...]) + np.asarray(layer.bias[...]))
  flat = h @ np.asarray(hn.output_kernel[...])
  out, offset = {}, 0
  for module, name in ORDER:
    t0 = np.asarray(getattr(getattr(hn.primary, module), name)[...], np.float64)
    out[module, name] = t0 + flat[:, offset : offset + t0.size].reshape(-1, *t0.shape)
    offset += t0.size
  assert offset == flat.shape[1]
  return out


def np_primary(theta, x):
  h = leaky(x @ theta["hidden", "kernel"] + theta["hidden", "bias"])
  return h @ theta["head", "kernel"] + theta["head", "bias"], (
    h @ theta["decoder", "kernel"] + theta["decoder", "bias"]
  )


# ----------------------------------------------------------------------------- encoding
def test_cos_sin_encoding_has_constant_norm_and_matches_numpy():
  z = np.random.default_rng(0).uniform(0, 1, (50, 3))
  with jax.enable_x64(True):
    for mode in hypernet.ENCODINGS:
      e = np.asarray(hypernet.encode_input(jnp.asarray(z), mode))
      np.testing.assert_allclose(e, np_encode(z, mode), rtol=1e-15, atol=1e-15)
    e = np.asarray(hypernet.encode_input(jnp.asarray(z), "cos|sin"))
  np.testing.assert_allclose(np.sum(e**2, -1), 3.0, rtol=1e-14)  # ||e(z)||^2 = d for every z
  np.testing.assert_allclose(e[:, :3], np.cos(np.pi * z / 2))  # all cosines, then all sines
  raw = np.sum(np_encode(z, "none") ** 2, -1)
  assert raw.max() / raw.min() > 10  # the raw input's magnitude follows gamma
  with pytest.warns(UserWarning, match="outside"):
    hypernet.encode_input(jnp.asarray([1.5]), "cos|sin")


# ------------------------------------------------------------------- theta(gamma) vs NumPy
@pytest.mark.parametrize("arm", list(ARMS))
def test_predicted_parameters_equal_the_numpy_float64_restatement(arm):
  gamma = np.array([[0.0], [0.3], [0.71], [1.0]])
  with jax.enable_x64(True):
    model = build(arm, seed=1, dtype="float64")
    # give theta_0 values off its init so its additive role is seen in every arm
    primary = model.hypernet.primary
    rng = np.random.default_rng(2)
    for module, name in ORDER:
      var = getattr(getattr(primary, module), name)
      var[...] = jnp.asarray(np.asarray(var[...]) + rng.normal(size=var.shape))
    theta = model.thetas(jnp.asarray(gamma[:, 0]))
    want = np_theta(model, gamma, ARMS[arm][0])
    for module, name in ORDER:
      got = np.asarray(getattr(theta, module)[name])
      np.testing.assert_allclose(got, want[module, name], rtol=1e-12, atol=1e-12)
    # batched conditioning: one gamma at a time gives the same trees
    one = model.hypernet(jnp.asarray(gamma[2]))
    np.testing.assert_allclose(
      np.asarray(one["head"]["kernel"]), want["head", "kernel"][2], rtol=1e-12, atol=1e-12
    )


def test_primary_on_predicted_parameters_equals_the_nnx_module_holding_them():
  x = np.random.default_rng(3).normal(size=(6, 8, 8, 1))
  lams = np.array([0.0, 0.4, 1.0])
  with jax.enable_x64(True):
    model = build("mip", seed=4, dtype="float64")
    out = model.forward(jnp.asarray(x), jnp.asarray(lams))
    thetas = model.thetas(jnp.asarray(lams))
    want = np_theta(model, lams[:, None], "cos|sin")
    for g in range(len(lams)):
      module = lambda_hypernet.DigitsMLP(64, 32, 10, dtype=jnp.float64, rngs=nnx.Rngs(9))
      nnx.update(module, jax.tree.map(lambda t: t[g], thetas))
      logits, recon = module(jnp.asarray(x.reshape(6, 64)))
      np.testing.assert_allclose(np.asarray(out["logits"][g]), np.asarray(logits), rtol=1e-13)
      np.testing.assert_allclose(
        np.asarray(out["reconstruction"][g]), np.asarray(recon), rtol=1e-13
      )
      np_logits, np_recon = np_primary({k: v[g] for k, v in want.items()}, x.reshape(6, 64))
      np.testing.assert_allclose(np.asarray(logits), np_logits, rtol=1e-10, atol=1e-12)
      np.testing.assert_allclose(np.asarray(recon), np_recon, rtol=1e-10, atol=1e-12)
  np.testing.assert_array_equal(np.asarray(out["lam"]), lams)


# ----------------------------------------------------------------------- initialisation
def _std_close(draws, std, rel=0.05):
  """Empirical std within ``rel`` of ``std`` (>= 2500 draws: ``rel`` is >= 3.5 standard errors)."""
  assert draws.size >= 2500
  assert np.std(draws) == pytest.approx(std, rel=rel)
  assert abs(np.mean(draws)) < rel * std


def test_initialisation_statistics_are_hyperlights():
  models = [build("mip", seed=s) for s in range(8)]
  sizes = dict(zip(ORDER, models[0].hypernet.sizes))
  offsets = np.cumsum([0] + [sizes[k] for k in ORDER])
  kernels = [np.asarray(m.hypernet.output_kernel[...]) for m in models]
  for i, key in enumerate(ORDER):  # MIP: each block N(0, 2 / |theta_p|), >= 10^4 draws
    block = np.concatenate([k[:, offsets[i] : offsets[i + 1]].ravel() for k in kernels])
    assert block.size >= 10_000
    _std_close(block, np.sqrt(2.0 / sizes[key]))
  whole = np.asarray(build("default").hypernet.output_kernel[...]).ravel()
  _std_close(whole, np.sqrt(1.0 / sum(sizes.values())), rel=0.02)  # fan-out, linear gain
  # hidden Linears: N(0, 2 / fan_out), bias 0. The fan-in does not enter, so the first layer
  # is drawn from a hypernetwork with a wide input (d = 64) to get enough draws.
  wide = [
    hypernet.HyperNet(
      lambda_hypernet.DigitsMLP(2, 2, 2, dtype=jnp.float32, rngs=nnx.Rngs(s)),
      input_size=64,
      hidden_sizes=(16, 64, 128),
      rngs=nnx.Rngs(s),
    )
    for s in range(2)
  ]
  for j, width in enumerate((16, 64, 128)):
    nets = wide if j == 0 else [m.hypernet for m in models]
    w = np.concatenate([np.ravel(net.hidden[j].kernel[...]) for net in nets])
    _std_close(w, np.sqrt(2.0 / width))
    assert not np.any(models[0].hypernet.hidden[j].bias[...])
  for module, fan_in in (("hidden", 64), ("head", 32), ("decoder", 32)):  # theta_0
    w = np.concatenate([np.ravel(getattr(m.hypernet.primary, module).kernel[...]) for m in models])
    _std_close(w, np.sqrt(2.0 / fan_in))
    assert np.abs(w).max() > 2.5 * np.sqrt(2.0 / fan_in)  # a normal, not a truncated one
    assert not np.any(getattr(models[0].hypernet.primary, module).bias[...])
  default = build("default").hypernet.primary  # no independent weights: theta_0 = 0
  assert not any(np.any(np.asarray(x)) for x in jax.tree.leaves(nnx.state(default)))


# --------------------------------------------------------------------------- the task
def test_task_weighs_cross_entropy_and_reconstruction_per_lambda():
  rng = np.random.default_rng(5)
  batch = {"image": rng.normal(size=(4, 8, 8, 1)), "label": np.array([0, 3, 9, 3])}
  outputs = {
    "logits": rng.normal(size=(2, 4, 10)),
    "reconstruction": rng.normal(size=(2, 4, 64)),
    "lam": np.array([0.2, 0.9]),
  }
  with jax.enable_x64(True):
    loss, acc = classify_and_reconstruct.per_example(jax.tree.map(jnp.asarray, outputs), batch)
  z = outputs["logits"] - outputs["logits"].max(-1, keepdims=True)
  ce = -np.take_along_axis(
    z - np.log(np.exp(z).sum(-1, keepdims=True)), batch["label"][None, :, None], -1
  )[..., 0]
  mse = ((outputs["reconstruction"] - batch["image"].reshape(4, 64)) ** 2).mean(-1)
  lam = outputs["lam"][:, None]
  np.testing.assert_allclose(np.asarray(loss), ((1 - lam) * ce + lam * mse).mean(0), rtol=1e-12)
  correct = outputs["logits"].argmax(-1) == batch["label"]
  np.testing.assert_allclose(np.asarray(acc), correct.mean(0))


def test_training_draws_one_lambda_per_batch_from_the_model_state_and_eval_uses_the_grid():
  model = build(hidden_sizes=(8,), primary_hidden=8)
  x = jnp.zeros((3, 8, 8, 1))
  first, second = model(x)["lam"], model(x)["lam"]
  assert first.shape == (1,) and 0 <= float(first[0]) <= 1 and first[0] != second[0]
  assert int(model.lambda_rng.count[...]) == 2
  again = build(hidden_sizes=(8,), primary_hidden=8)
  assert again(x)["lam"][0] == first[0]  # the same seed draws the same lambdas
  model.eval()
  np.testing.assert_allclose(np.asarray(model(x)["lam"]), [0, 0.25, 0.5, 0.75, 1])
  assert int(model.lambda_rng.count[...]) == 2


# ------------------------------------------------------------------- trainer, command
TINY = {
  "model.hidden_sizes": (8, 16),
  "model.primary_hidden": 8,
  "batch_size": 32,
  "log_every": 1,
  "eval_every": 0,
}


def test_resumed_run_is_exact_and_the_lambda_grid_command_matches_the_trainer(tmp_path):
  config = lambda steps: tu.apply(tu.load_config("hypernet_mip"), {**TINY, "total_steps": steps})
  final = train.train_and_evaluate(config(6), str(tmp_path / "straight"))
  train.train_and_evaluate(config(3), str(tmp_path / "resumed"))
  train.train_and_evaluate(config(6), str(tmp_path / "resumed"))  # resumes at step 3
  a, b = tu.restore_state(tmp_path / "straight"), tu.restore_state(tmp_path / "resumed")
  assert all(np.array_equal(x, y) for x, y in zip(tu.leaves(a), tu.leaves(b)))
  assert int(np.asarray(a["model_state"]["lambda_rng"]["count"])) == 6  # one lambda per step

  results = hypernet_eval.evaluate(str(tmp_path / "straight"), lambdas=(0, 0.25, 0.5, 0.75, 1))
  grid_mean = np.mean([r["loss"] for r in results.values()])
  assert grid_mean == pytest.approx(final["eval_loss"], rel=1e-5)
  assert np.mean([r["accuracy"] for r in results.values()]) == pytest.approx(
    final["eval_accuracy"], abs=1e-6
  )
  r = results[0.5]
  assert r["loss"] == pytest.approx(0.5 * r["ce"] + 0.5 * r["mse"], rel=1e-5)
  assert "| 0.75 |" in hypernet_eval.format_table(results)
  with pytest.raises(ValueError, match=r"--lambdas \[1.5\]: give one or more loss weights"):
    hypernet_eval.evaluate(str(tmp_path / "straight"), lambdas=(1.5,))
  bad = tu.run_cli(
    [sys.executable, "-m", "normjax.tools.hypernet_eval", "--workdir", str(tmp_path / "none")],
    tu.env(),
  )
  assert bad.returncode == 1 and bad.stderr.strip().splitlines()[-1].startswith(
    "normjax.tools.hypernet_eval: "
  )
  assert len(bad.stderr.strip().splitlines()) == 1, bad.stderr


@pytest.mark.parametrize(
  "key,value,message",
  [
    ("model.encoding", "sin", "config key model.encoding='sin': valid choices"),
    ("model.hidden_sizes", (8, 0), "config key model.hidden_sizes=(8, 0)"),
    ("model.eval_grid", 0, "config key model.eval_grid=0"),
    ("model.dtype", "bfloat16", "config key model.dtype='bfloat16'"),
    ("data.name", "digits", "a classify_and_reconstruct model cannot train on"),
  ],
)
def test_bad_hyperparameters_fail_with_a_message(key, value, message):
  config = tu.apply(tu.load_config("hypernet_mip"), {key: value})
  with pytest.raises((ValueError, KeyError), match=re.escape(message)):
    run.build(config)


def test_bad_config_argument_and_stateful_primary_are_refused():
  with pytest.raises(ValueError, match="config argument param='mipp'"):
    tu.load_config("hypernet_mip", "param=mipp")

  class WithStats(nnx.Module):
    def __init__(self):
      self.linear = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
      self.stats = nnx.BatchStat(jnp.zeros(2))

  with pytest.raises(ValueError, match="nnx.Param leaves only"):
    hypernet.HyperNet(WithStats(), input_size=1, hidden_sizes=(4,), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="model argument init_independent_weights=1: must be"):
    hypernet.HyperNet(
      WithStats().linear,
      input_size=1,
      hidden_sizes=(),
      init_independent_weights=1,
      rngs=nnx.Rngs(0),
    )
  with pytest.raises(ValueError, match="model argument hidden_sizes=\\(4, -1\\)"):
    hypernet.HyperNet(WithStats().linear, input_size=1, hidden_sizes=(4, -1), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="last axis 2 != input_size 1"):
    build().hypernet(jnp.zeros((3, 2)))


# ------------------------------------------------------- the official torch code (optional)
def test_forward_equals_the_official_hyperlight_hypernet():
  hl = pytest.importorskip("hyperlight")
  torch = pytest.importorskip("torch")
  gamma = np.array([[0.0], [0.37], [1.0]])
  for arm in ("mip", "default"):
    encoding, independent, split = ARMS[arm]
    with jax.enable_x64(True):
      model = build(arm, seed=6, dtype="float64")
      theta = model.thetas(jnp.asarray(gamma[:, 0]))
    hn = model.hypernet
    shapes = {f"{m}.{p}": tuple(getattr(getattr(hn.primary, m), p).shape) for m, p in ORDER}
    net = hl.HyperNet(
      input_shapes={"lam": (1,)},
      output_shapes=shapes,
      hidden_sizes=[16, 64, 128],
      encoding=None if encoding == "none" else encoding,
      init_independent_weights=independent,
      output_split_init=split,
    ).double()
    layers = [net.backbone[i] for i in range(0, 6, 2)]
    with torch.no_grad():
      for ours, theirs in zip(hn.hidden, layers):  # Flax (in, out) -> torch (out, in)
        theirs.weight.copy_(torch.from_numpy(np.asarray(ours.kernel[...]).T.copy()))
        theirs.bias.copy_(torch.from_numpy(np.asarray(ours.bias[...]).copy()))
      net.backbone.output.weight.copy_(torch.from_numpy(np.asarray(hn.output_kernel[...]).T.copy()))
      theta0 = np.concatenate([np.ravel(getattr(getattr(hn.primary, m), p)[...]) for m, p in ORDER])
      net.backbone.output.bias.copy_(torch.from_numpy(theta0))
      got = net(lam=torch.from_numpy(gamma))
    for m, p in ORDER:
      np.testing.assert_allclose(
        got[f"{m}.{p}"].numpy(), np.asarray(getattr(theta, m)[p]), rtol=1e-12, atol=1e-12
      )
