"""Unified Normalization: forward, custom backward and state (windows, warmup, gradient
compensation, outlier skip) against a float64 numpy reference written from the official
algorithm (hikvision-research/Unified-Normalization unified_normalization.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from normjax import norms
from normjax.norms.unified import UnifiedNorm, unified_norm
from tests import transformer_norm_utils as tn

B, T, C = 8, 3, 6
EPS, MOMENTUM = 1e-5, 0.8


def ref_step(x, mask, scale, bias, s, dy, *, warmup, filtration):
  """One training step of the official UN (UN2dFunction forward + backward), float64."""
  s = {k: np.array(v, np.float64) for k, v in s.items()}
  w_f, w_b = len(s["buffer_x2"]), len(s["buffer_gz"])
  t = int(s["step"]) + 1
  x2 = np.mean(x[mask] ** 2, axis=0)
  recorded = np.var(np.sqrt(s["buffer_x2"]), ddof=1)
  buf = s["buffer_x2"].copy()
  buf[t % w_f] = x2
  skip, outlier = w_f <= 1, False
  if filtration and t >= warmup:
    am, gm = buf.mean(0), np.exp(np.log(buf).mean(0))
    if np.any(am - gm > w_f * recorded):
      buf[t % w_f] = s["running_var"]
      skip = outlier = True
  var = x2 if (t <= w_f or t < warmup or skip) else np.exp(np.log(buf).mean(0))
  r = np.sqrt(var + EPS) / np.sqrt(s["running_var"] + EPS)
  r = np.ones(C) if (t <= max(1000, warmup) or skip) else np.clip(r, 0.2, 5.0)
  z = x / np.sqrt(var + EPS)
  y = scale * z + bias
  g = dy * scale * r
  gz = np.mean(g * z, axis=(0, 1))
  bgz = s["buffer_gz"].copy()
  bgz[t % w_b] = s["ema_gz"] if skip else gz
  mean_gz = gz if (t <= w_b or t < warmup or skip) else bgz.mean(0)
  ema = MOMENTUM * s["ema_gz"] + (1 - MOMENTUM) * mean_gz
  approx = g - (mean_gz if skip else ema) * z
  grads = {
    "x": approx / np.sqrt(var + EPS),
    "scale": np.sum(dy * r * z, (0, 1)),
    "bias": np.sum(dy, (0, 1)),
  }
  new = {
    "running_var": MOMENTUM * s["running_var"] + (1 - MOMENTUM) * var,
    "buffer_x2": buf,
    "ema_gz": ema,
    "buffer_gz": bgz,
    "step": t,
    "skip_counter": s["skip_counter"] + outlier,
  }
  return y, grads, new, {"skip": skip, "r": r}


def run_and_compare(window, warmup, filtration, batches, initial=None):
  make = lambda rngs: UnifiedNorm(
    C,
    window=window,
    warmup_steps=warmup,
    outlier_filtration=filtration,
    epsilon=EPS,
    momentum=MOMENTUM,
  )
  model_def, params, state = tn.make_probe(make, (B, T, C))
  rng = np.random.default_rng(0)
  params["norm"] = {
    "scale": rng.uniform(0.5, 1.5, C).astype(np.float32),
    "bias": rng.normal(size=C).astype(np.float32),
  }
  if initial:
    state["norm"] = {
      **state["norm"],
      **{k: jnp.asarray(v, state["norm"][k].dtype) for k, v in initial.items()},
    }
  ref = {k: np.asarray(v) for k, v in state["norm"].items()}
  step = tn.train_step(model_def)
  info = []
  for i, (x, dy, mask) in enumerate(batches):
    y, grads, state = step(tn.with_x(params, x), state, dy, mask)
    ref_y, ref_grads, ref, extra = ref_step(
      x,
      mask,
      np.float64(params["norm"]["scale"]),
      np.float64(params["norm"]["bias"]),
      ref,
      dy,
      warmup=warmup,
      filtration=filtration,
    )
    info.append(extra)
    tn.assert_close(y, ref_y, msg=f"y at call {i + 1}")
    tn.assert_close(grads["x"], ref_grads["x"], msg=f"dx at call {i + 1}")
    for k in ("scale", "bias"):
      tn.assert_close(grads["norm"][k], ref_grads[k], msg=f"d{k} at call {i + 1}")
    for k, v in ref.items():
      tn.assert_close(state["norm"][k], v, msg=f"{k} after call {i + 1}")
  return model_def, params, state, ref, info


def batches(rng, n, scales=None):
  out = []
  for i in range(n):
    factor = 1.0 if scales is None else scales[i]
    x = rng.normal(size=(B, T, C)) * np.linspace(0.7, 1.4, C) * factor
    out.append((x, rng.normal(size=(B, T, C)), tn.random_mask(rng, (B, T))))
  return out


def test_warmup_then_windows_forward_and_backward():
  """Windows (2 forward, 3 backward), warmup 3: batch stats, then GM / window-mean + EMA."""
  model_def, params, state, ref, _ = run_and_compare(
    (2, 3), 3, False, batches(np.random.default_rng(1), 6)
  )
  x = np.random.default_rng(2).normal(size=(B, T, C))
  model = model_def.merge(tn.with_x(params, x), state, train=False)
  expected = (
    np.float64(params["norm"]["scale"]) * x / np.sqrt(ref["running_var"] + EPS)
    + params["norm"]["bias"]
  )
  tn.assert_close(model(None), expected)  # eval: per-channel affine with running_var


def test_gradient_compensation_after_1000_steps_is_clipped():
  rng = np.random.default_rng(3)
  initial = {
    "step": 1000,
    "buffer_x2": rng.uniform(0.5, 1.5, (4, C)),
    "buffer_gz": rng.normal(size=(4, C)),
    "ema_gz": rng.normal(size=C),
    "running_var": np.concatenate([np.full(C // 2, 100.0), np.full(C - C // 2, 0.01)]),
  }
  *_, info = run_and_compare(4, 10, False, batches(rng, 3), initial)
  r = np.stack([i["r"] for i in info])
  assert np.isclose(r.min(), 0.2) and np.isclose(r.max(), 5.0)  # both clip bounds hit


def test_outlier_batch_is_skipped():
  rng = np.random.default_rng(4)
  level = np.linspace(0.7, 1.4, C) ** 2
  initial = {
    "step": 20,
    "buffer_x2": np.tile(level, (4, 1)),
    "running_var": level,
    "buffer_gz": rng.normal(size=(4, C)) * 0.1,
    "ema_gz": rng.normal(size=C) * 0.1,
  }
  _, _, state, _, info = run_and_compare(4, 5, True, batches(rng, 3, [1.0, 10.0, 1.0]), initial)
  assert [i["skip"] for i in info] == [False, True, False]
  assert int(state["norm"]["skip_counter"]) == 1


def test_window_of_one_always_uses_batch_statistics():
  *_, info = run_and_compare(1, 0, False, batches(np.random.default_rng(5), 3))
  assert all(i["skip"] for i in info)


def test_pure_function_equals_module():
  rng = np.random.default_rng(6)
  x = jnp.asarray(rng.normal(size=(4, 5, C)), jnp.float32)
  module = UnifiedNorm(C, window=2, warmup_steps=0)
  module.step[...] = jnp.asarray(3, jnp.int32)
  module.buffer_x2[...] = jnp.asarray(rng.uniform(0.5, 2, (2, C)), jnp.float32)
  state = module.state_dict()
  y, new_state = unified_norm(x, module.params(), state, train=True, warmup_steps=0)
  np.testing.assert_array_equal(module(x), y)
  for k in ("running_var", "buffer_x2", "step"):
    np.testing.assert_array_equal(getattr(module, k)[...], new_state[k])
  module.eval()
  np.testing.assert_array_equal(
    module(x), unified_norm(x, module.params(), module.state_dict(), train=False)[0]
  )


def test_sharded_equals_unsharded():
  make = lambda rngs: UnifiedNorm(C, window=2, warmup_steps=0, outlier_filtration=True)
  model_def, params, state = tn.make_probe(make, (B, T, C))
  step = tn.train_step(model_def)
  for x, dy, mask in batches(np.random.default_rng(7), 3):  # into the windowed regime
    p = tn.with_x(params, x)
    expected = step(p, state, dy, mask)
    got = tn.run_sharded(step, p, state, dy, mask)
    for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(got)):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    state = expected[2]


def test_registry_export_and_errors():
  assert norms.NORMS.get("unifiednorm") is UnifiedNorm is norms.UnifiedNorm
  assert UnifiedNorm(C, window=(3, 2)).buffer_gz[...].shape == (2, C)
  for kwargs, match in [
    ({"window": 0}, "window=0"),
    ({"window": (1, 2, 3)}, "window"),
    ({"momentum": 2.0}, "momentum=2.0"),
    ({"warmup_steps": 1.5}, "warmup"),
  ]:
    with pytest.raises(ValueError, match=match):
      UnifiedNorm(C, **kwargs)
