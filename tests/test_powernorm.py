"""PowerNorm: forward and approximate backward against a float64 numpy reference written from
the official algorithm (sIncerass/powernorm mask_powernorm.py), over several steps."""

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from normjax import norms
from normjax.norms import NORMS
from normjax.norms.powernorm import PowerNorm, group_scaling, power_norm
from tests import transformer_norm_utils as tn

B, T, C, GROUPS = 8, 3, 8, 2
EPS, A_FWD, A_BKW, WARMUP = 1e-5, 0.8, 0.7, 2
GS_EPS = 1e-5


def ref_group_scaling(x):
  g = x.reshape(*x.shape[:-1], GROUPS, C // GROUPS)
  r = np.sqrt(np.mean(g**2, -1, keepdims=True) + GS_EPS)
  return (g / r).reshape(x.shape), g, r


def ref_group_scaling_vjp(x, dh):
  _, g, r = ref_group_scaling(x)
  dg = dh.reshape(g.shape)
  dx = dg / r - g * np.sum(dg * g, -1, keepdims=True) / (g.shape[-1] * r**3)
  return dx.reshape(x.shape)


def ref_step(x, mask, scale, bias, state, dy):
  """One training step (forward + backward) of the official PowerNorm, in float64."""
  t = state["step"] + 1
  h = ref_group_scaling(x)[0]
  psi = np.mean(h[mask] ** 2, axis=0)  # only real tokens
  phi = state["running_phi"]
  var = psi if t <= WARMUP else phi
  z = h / np.sqrt(var + EPS)
  y = scale * z + bias
  new_phi = phi * (t - 1) / t + psi / t if t < WARMUP else phi
  new_phi = A_FWD * new_phi + (1 - A_FWD) * psi
  g = scale * dy
  approx = g - (1 - A_BKW) * state["ema_gz"] * z
  new_ema = state["ema_gz"] + np.mean(approx * z, axis=(0, 1))  # all positions
  dx = ref_group_scaling_vjp(x, approx / np.sqrt(psi + EPS))
  grads = {"x": dx, "scale": np.sum(dy * z, (0, 1)), "bias": np.sum(dy, (0, 1))}
  return y, grads, {"running_phi": new_phi, "ema_gz": new_ema, "step": t}


def make_norm(rngs):
  return PowerNorm(
    C, groups=GROUPS, epsilon=EPS, alpha_fwd=A_FWD, alpha_bkw=A_BKW, warmup_steps=WARMUP, rngs=rngs
  )


@pytest.fixture(scope="module")
def probe():
  model_def, params, state = tn.make_probe(make_norm, (B, T, C))
  rng = np.random.default_rng(0)
  params["norm"] = {
    "scale": rng.uniform(0.5, 1.5, C).astype(np.float32),
    "bias": rng.normal(size=C).astype(np.float32),
  }
  return model_def, params, state, tn.train_step(model_def)


def inputs(rng, step):
  x = rng.normal(size=(B, T, C)) * rng.uniform(0.5, 3.0, C)
  return x, rng.normal(size=(B, T, C)), tn.random_mask(rng, (B, T))


def test_steps_match_reference_through_warmup_switch(probe):
  """Batch statistics for WARMUP steps, then the running one; backward uses the batch psi."""
  model_def, params, state, step = probe
  rng = np.random.default_rng(1)
  ref = {"running_phi": np.ones(C), "ema_gz": np.zeros(C), "step": 0}
  scale, bias = (np.float64(params["norm"][k]) for k in ("scale", "bias"))
  for i in range(5):
    x, dy, mask = inputs(rng, i)
    y, grads, state = step(tn.with_x(params, x), state, dy, mask)
    ref_y, ref_grads, ref = ref_step(x, mask, scale, bias, ref, dy)
    tn.assert_close(y, ref_y, msg=f"y at step {i + 1}")
    tn.assert_close(grads["x"], ref_grads["x"], msg=f"dx at step {i + 1}")
    for k in ("scale", "bias"):
      tn.assert_close(grads["norm"][k], ref_grads[k], msg=f"d{k} at step {i + 1}")
    for k in ("running_phi", "ema_gz", "step"):
      tn.assert_close(state["norm"][k], ref[k], msg=f"{k} after step {i + 1}")
  assert int(state["norm"]["step"]) == 5 and "ema_gz" not in grads["norm"]

  # eval: GroupScaling, then the running statistic
  x = rng.normal(size=(B, T, C))
  model = model_def.merge(tn.with_x(params, x), state, train=False)
  expected = scale * ref_group_scaling(x)[0] / np.sqrt(ref["running_phi"] + EPS) + bias
  tn.assert_close(model(None), expected)


def test_padding_is_excluded_from_statistics_only(probe):
  model_def, params, state, step = probe
  rng = np.random.default_rng(2)
  x, dy, mask = inputs(rng, 0)
  mask[:, -1] = False
  y, _, new = step(tn.with_x(params, x), state, dy, mask)
  x_padded = x.copy()
  x_padded[~mask] *= 100.0  # padding values do not change the statistics
  y2, _, new2 = step(tn.with_x(params, x_padded), state, dy, mask)
  np.testing.assert_allclose(np.asarray(y)[mask], np.asarray(y2)[mask], rtol=1e-5)
  np.testing.assert_allclose(new["norm"]["running_phi"], new2["norm"]["running_phi"], rtol=1e-6)
  assert not np.allclose(new["norm"]["ema_gz"], new2["norm"]["ema_gz"])  # backward mean: all


def test_pure_function_equals_module():
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.normal(size=(4, 5, C)), jnp.float32)
  module = make_norm(None)
  module.running_phi[...] = jnp.asarray(rng.uniform(0.5, 2, C), jnp.float32)
  module.step[...] = jnp.asarray(WARMUP, jnp.int32)  # next call uses the running statistic
  state = module.state_dict()
  y, new_state = power_norm(
    x,
    module.params(),
    state,
    train=True,
    groups=GROUPS,
    epsilon=EPS,
    alpha_fwd=A_FWD,
    alpha_bkw=A_BKW,
    warmup_steps=WARMUP,
  )
  np.testing.assert_array_equal(module(x), y)
  np.testing.assert_array_equal(module.running_phi[...], new_state["running_phi"])
  module.eval()
  y_eval, same = power_norm(
    x, module.params(), module.state_dict(), train=False, groups=GROUPS, epsilon=EPS
  )
  np.testing.assert_array_equal(module(x), y_eval)
  assert int(module.step[...]) == WARMUP + 1 and same["step"] == module.step[...]


def test_sharded_equals_unsharded(probe):
  model_def, params, state, step = probe
  x, dy, mask = inputs(np.random.default_rng(4), 0)
  params = tn.with_x(params, x)
  expected = step(params, state, dy, mask)
  got = tn.run_sharded(step, params, state, dy, mask)
  for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(got)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_state_checkpoint_round_trip(probe, tmp_path):
  model_def, params, state, step = probe
  rng = np.random.default_rng(5)
  for i in range(3):
    x, dy, mask = inputs(rng, i)
    _, _, state = step(tn.with_x(params, x), state, dy, mask)
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(tmp_path / "state", state)
  checkpointer.wait_until_finished()
  restored = checkpointer.restore(tmp_path / "state", state)
  x, dy, mask = inputs(rng, 3)
  for a, b in zip(
    jax.tree.leaves(step(tn.with_x(params, x), state, dy, mask)),
    jax.tree.leaves(step(tn.with_x(params, x), restored, dy, mask)),
  ):
    np.testing.assert_array_equal(a, b)


def test_registry_export_and_errors():
  assert NORMS.get("powernorm") is PowerNorm is norms.PowerNorm
  assert norms.group_scaling is group_scaling
  for kwargs, match in [
    ({"groups": 3}, "groups=3"),
    ({"alpha_fwd": 1.5}, "alpha_fwd=1.5"),
    ({"warmup_steps": -1}, "warmup_steps=-1"),
    ({"epsilon": 0.0}, "epsilon"),
  ]:
    with pytest.raises(ValueError, match=match):
      PowerNorm(C, **kwargs)


def test_vit_powernorm_config_trains(tmp_path):
  """The headline command's config, shrunk: runs, learns state, checkpoints it."""
  from normjax import train
  from tests import trainer_utils as tu

  config = tu.apply(tu.load_config("vit_powernorm"), tu.overrides("vit", 3))
  config.model.norm_kwargs.groups = 2  # the shrunk model has 2 heads
  assert np.isfinite(train.train_and_evaluate(config, str(tmp_path))["eval_loss"])
  norm_state = tu.restore_state(tmp_path)["model_state"]["transformer"]["final_norm"]
  assert int(norm_state["step"]) == 3 and np.abs(norm_state["ema_gz"]).max() > 0
