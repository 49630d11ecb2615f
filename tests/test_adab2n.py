"""AdaB²N against an independent float64 NumPy re-statement of the official forward
(lvyilin/AdaB2N ``models/utils/adab2n.py``), BatchNorm at kappa = 1, gradients into the task
logits, the options, bad inputs and the state's checkpoint round trip."""

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from normjax import kernels
from normjax.norms import adab2n as ada
from normjax.norms import make_norm
from normjax.state import pop_aux_loss

C, EPS, M_TORCH = 4, 1e-5, 0.1


# ----------------------------------------------------------------------------- reference
class OfficialEta:
  """The official ``get_eta`` recursion (``last_eta`` as a Python attribute)."""

  def __init__(self, kappa, m=M_TORCH):
    self.kappa, self.m, self.last, self.n = kappa, m, None, 0

  def __call__(self):
    self.n += 1
    if self.kappa == 0.0:
      return 1.0 / self.n
    if self.kappa == 1.0:
      return self.m
    if self.last is None:
      self.last = self.m**self.kappa
      return self.last
    self.last = self.last / (self.last + (1 - self.m) ** self.kappa)
    return self.last


def reference_forward(x, w, rm, rv, T, task_ids, eta, scale, bias, renormalize=False):
  """One official training forward (channels-last), float64: (y, mu, var, rm, rv, loss)."""
  x = np.asarray(x, np.float64)
  per_example = x.reshape(x.shape[0], -1, x.shape[-1])
  if task_ids is not None and T > 0:
    counts = np.zeros(T + 1)
    for t in task_ids:
      counts[t] += 1
    conc = np.exp(w[: T + 1]) + counts
    pi = conc / conc.sum()
    omega = np.array([pi[t] / counts[t] for t in task_ids])
    if renormalize:
      omega = omega / omega.sum()
    mu = omega @ per_example.mean(1)
    var = omega @ ((per_example - mu) ** 2).mean(1)
  else:
    mu = per_example.reshape(-1, x.shape[-1]).mean(0)
    var = ((per_example.reshape(-1, x.shape[-1]) - mu) ** 2).mean(0)
  y = (x - mu) / np.sqrt(var + EPS) * scale + bias
  rm = rm + eta * (mu - rm)
  rv = (1 - eta) * rv + eta * var
  loss = np.mean((mu - rm) ** 2) + np.mean((var - rv) ** 2)
  return y, mu, var, rm, rv, loss


def fake_stream(rng, steps=20):
  """(x, task ids, end_task after this step) over 3 tasks; some batches miss a seen task."""
  out = []
  for s in range(steps):
    task = 0 if s < 6 else (1 if s < 13 else 2)
    ids = [task] * 5
    if task > 0:
      ids += list(rng.integers(0, task, size=int(rng.integers(1, 4))))
      if s == 15:
        ids = [2] * 4 + [0] * 2  # task 1 seen but absent: the weights do not sum to 1
    x = rng.normal(size=(len(ids), 3, 2, C)) * (1 + np.arange(C)) + 0.3 * task
    out.append((x, np.array(ids), s in (5, 12)))
  return out


# ----------------------------------------------------------------------------- tests
@pytest.mark.parametrize("kappa", [0.0, 0.1, 0.4, 0.7, 1.0])
def test_closed_form_eta_is_the_official_recursion(kappa):
  with jax.enable_x64(True):
    recursion = OfficialEta(kappa)
    expected = [recursion() for _ in range(200)]
    got = [float(ada.modified_momentum(n, 1 - M_TORCH, kappa)) for n in range(1, 201)]
  np.testing.assert_allclose(got, expected, rtol=1e-12)
  if 0 < kappa < 1:  # decreasing from m^kappa to 1 - (1 - m)^kappa
    assert got[0] == pytest.approx(M_TORCH**kappa) and got[-1] < got[0]
    with jax.enable_x64(True):
      limit = float(ada.modified_momentum(20000, 1 - M_TORCH, kappa))
    assert limit == pytest.approx(1 - (1 - M_TORCH) ** kappa, rel=1e-9)


@pytest.mark.parametrize("kappa,renormalize", [(0.4, False), (0.0, False), (0.7, True)])
def test_twenty_steps_of_a_three_task_stream_match_the_reference(kappa, renormalize):
  rng = np.random.default_rng(0)
  with jax.enable_x64(True):
    norm = make_norm(
      "adab2n",
      C,
      rngs=nnx.Rngs(0),
      num_tasks=3,
      kappa=kappa,
      renormalize_weights=renormalize,
      aux_loss_weight=1.0,
    )
    w = rng.normal(size=3)
    scale, bias = rng.normal(size=C), rng.normal(size=C)
    norm.task_logits.value = jnp.asarray(w)  # float64 values (``[...] =`` keeps float32)
    norm.scale.value, norm.bias.value = jnp.asarray(scale), jnp.asarray(bias)
    for name in ("mean", "var"):
      getattr(norm, name).value = getattr(norm, name)[...].astype(jnp.float64)
    rm, rv, T, eta = np.zeros(C), np.ones(C), 0, OfficialEta(kappa)
    for x, ids, finish in fake_stream(rng):
      y = norm(jnp.asarray(x), task_ids=jnp.asarray(ids))
      loss = float(pop_aux_loss(norm))
      y_ref, _, _, rm, rv, loss_ref = reference_forward(
        x, w, rm, rv, T, ids, eta(), scale, bias, renormalize
      )
      np.testing.assert_allclose(np.asarray(y), y_ref, rtol=1e-9, atol=1e-10)
      np.testing.assert_allclose(np.asarray(norm.mean[...]), rm, rtol=1e-9, atol=1e-12)
      np.testing.assert_allclose(np.asarray(norm.var[...]), rv, rtol=1e-9, atol=1e-12)
      assert loss == pytest.approx(loss_ref * (T >= 1), rel=1e-8, abs=1e-15)
      if finish:
        norm.end_task()
        T += 1
    assert int(norm.count[...]) == 20 and int(norm.seen_tasks[...]) == 2
    norm.eval()
    x = rng.normal(size=(3, 2, 2, C))
    expected = (x - rm) / np.sqrt(rv + EPS) * scale + bias
    np.testing.assert_allclose(np.asarray(norm(jnp.asarray(x))), expected, rtol=1e-9)


def test_gradient_into_the_task_logits_matches_finite_differences():
  """jax.grad of sum(y * r) + 10 * l against central differences of the NumPy reference, with
  the running statistics in l held at their values (the official code detaches them)."""
  rng = np.random.default_rng(1)
  x = rng.normal(size=(7, 3, 3, C)) + rng.normal(size=C)
  ids = np.array([2, 2, 2, 0, 0, 1, 2])
  r = rng.normal(size=x.shape)
  w0, scale = rng.normal(size=4), rng.normal(size=C)  # one more task logit than seen
  rm0, rv0 = rng.normal(size=C), rng.uniform(0.5, 2, C)
  with jax.enable_x64(True):
    eta = float(ada.modified_momentum(4, 1 - M_TORCH, 0.4))
  _, _, _, rm_new, rv_new, _ = reference_forward(x, w0, rm0, rv0, 2, ids, eta, scale, 0.0)

  def reference_loss(w):
    y, mu, var, _, _, _ = reference_forward(x, w, rm0, rv0, 2, ids, eta, scale, 0.0)
    return np.sum(y * r) + 10.0 * (np.mean((mu - rm_new) ** 2) + np.mean((var - rv_new) ** 2))

  with jax.enable_x64(True):
    params = {"scale": jnp.asarray(scale), "bias": jnp.zeros(C)}
    state = {
      "mean": jnp.asarray(rm0),
      "var": jnp.asarray(rv0),
      "count": jnp.asarray(3, jnp.int32),
      "seen_tasks": jnp.asarray(2, jnp.int32),
    }

    def loss(logits):
      y, new = ada.adab2n(
        jnp.asarray(x),
        {**params, "task_logits": logits},
        state,
        train=True,
        task_ids=jnp.asarray(ids),
        kappa=0.4,
      )
      return jnp.sum(y * r) + 10.0 * new["stat_loss"]

    grad = np.asarray(jax.grad(loss)(jnp.asarray(w0)))
    assert float(loss(jnp.asarray(w0))) == pytest.approx(reference_loss(w0), rel=1e-10)
  h, numeric = 1e-6, []
  for k in range(4):
    e = np.zeros(4)
    e[k] = h
    numeric.append((reference_loss(w0 + e) - reference_loss(w0 - e)) / (2 * h))
  np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-8)
  assert grad[3] == 0.0 and np.all(np.abs(grad[:3]) > 1e-6)  # unseen task: no gradient


def test_kappa_one_without_task_ids_is_batchnorm_exactly():
  rng = np.random.default_rng(2)
  a = make_norm("adab2n", C, rngs=nnx.Rngs(0), kappa=1.0, momentum=0.9, num_tasks=3)
  b = make_norm("batchnorm", C, rngs=nnx.Rngs(0), momentum=0.9)
  for norm in (a, b):
    norm.scale[...] = jnp.asarray(np.linspace(0.5, 2, C), jnp.float32)
  for step in range(5):
    x = jnp.asarray(rng.normal(size=(6, 3, 3, C)) * 3 + 1, jnp.float32)
    # BatchNorm's formula path: on CPU its training mode otherwise runs the fused custom_vjp
    # (normjax/kernels/batch_norm.py), equal to rounding, not bit for bit
    with kernels.use_implementation("reference"):
      expected = np.asarray(b(x))
    np.testing.assert_array_equal(np.asarray(a(x)), expected, err_msg=f"step {step}")
    np.testing.assert_array_equal(np.asarray(a.mean[...]), np.asarray(b.mean[...]))
    np.testing.assert_array_equal(np.asarray(a.var[...]), np.asarray(b.var[...]))
  a.eval(), b.eval()
  x = jnp.asarray(rng.normal(size=(2, 3, 3, C)), jnp.float32)
  np.testing.assert_array_equal(np.asarray(a(x)), np.asarray(b(x)))


def test_kappa_zero_running_mean_is_the_cumulative_mean_of_batch_means():
  rng = np.random.default_rng(3)
  norm = make_norm("adab2n", C, rngs=nnx.Rngs(0), kappa=0.0)
  means = []
  for _ in range(12):
    x = rng.normal(size=(5, 2, 2, C)) + rng.normal(size=C) * 3
    means.append(x.reshape(-1, C).mean(0))
    norm(jnp.asarray(x, jnp.float32))
  np.testing.assert_allclose(np.asarray(norm.mean[...]), np.mean(means, 0), rtol=1e-5, atol=1e-6)


def test_absent_seen_task_shrinks_the_mean_unless_renormalized():
  x = np.ones((4, 1, 1, C)) * 2.0
  ids = jnp.asarray([1, 1, 1, 1])  # task 0 seen (T = 1), absent from the batch
  state = {
    "mean": jnp.zeros(C),
    "var": jnp.ones(C),
    "count": jnp.asarray(0, jnp.int32),
    "seen_tasks": jnp.asarray(1, jnp.int32),
  }
  params = {"task_logits": jnp.zeros(2)}
  _, official = ada.adab2n(jnp.asarray(x, jnp.float32), params, state, train=True, task_ids=ids)
  _, fixed = ada.adab2n(
    jnp.asarray(x, jnp.float32), params, state, train=True, task_ids=ids, renormalize_weights=True
  )
  pi_present = (1 + 4) / ((1 + 0) + (1 + 4))  # c_k = exp(0) + n_k
  np.testing.assert_allclose(np.asarray(official["mean"]), 0.1 * 2.0 * pi_present, rtol=1e-6)
  np.testing.assert_allclose(np.asarray(fixed["mean"]), 0.1 * 2.0, rtol=1e-6)


def test_unbiased_running_variance_option():
  rng = np.random.default_rng(4)
  x = rng.normal(size=(5, 2, 3, C))
  with jax.enable_x64(True):
    state = {
      "mean": jnp.zeros(C),
      "var": jnp.zeros(C),
      "count": jnp.asarray(0, jnp.int32),
      "seen_tasks": jnp.asarray(0, jnp.int32),
    }
    params = {"task_logits": jnp.zeros(1)}
    _, new = ada.adab2n(
      jnp.asarray(x), params, state, train=True, momentum=0.0, unbiased_running_var=True
    )
  np.testing.assert_allclose(np.asarray(new["var"]), x.reshape(-1, C).var(0, ddof=1), rtol=1e-10)


def test_aux_loss_is_recorded_weighted_from_aux_from_task_on():
  norm = make_norm("adab2n", C, rngs=nnx.Rngs(0), num_tasks=2, aux_loss_weight=0.5, kappa=0.4)
  assert norm.records_aux_loss and norm.needs_task_ids and norm.uses_batch_statistics
  x = jnp.asarray(np.random.default_rng(5).normal(size=(4, 2, 2, C)) + 1, jnp.float32)
  norm(x, task_ids=jnp.zeros(4, jnp.int32))
  assert float(pop_aux_loss(norm)) == 0.0  # T = 0: no replay yet
  norm.end_task()
  norm(x, task_ids=jnp.asarray([1, 1, 0, 0]))
  assert float(pop_aux_loss(norm)) > 0.0
  assert not make_norm("adab2n", C, rngs=nnx.Rngs(0)).records_aux_loss


def test_bad_inputs_are_refused_naming_the_value():
  norm = make_norm("adab2n", C, rngs=nnx.Rngs(0), num_tasks=3)
  x = jnp.ones((4, 2, 2, C))
  with pytest.raises(ValueError, match="task id 3: out of range"):
    norm(x, task_ids=jnp.asarray([0, 1, 3, 0]))
  with pytest.raises(ValueError, match="task id -1: out of range"):
    norm(x, task_ids=jnp.asarray([0, -1, 0, 0]))
  with pytest.raises(ValueError, match="task id 1: above seen_tasks=0"):
    norm(x, task_ids=jnp.asarray([0, 1, 0, 0]))
  with pytest.raises(ValueError, match=r"shape \(3,\)"):
    norm(x, task_ids=jnp.asarray([0, 0, 0]))
  with pytest.raises(ValueError, match="must be integers"):
    norm(x, task_ids=jnp.zeros(4))
  with pytest.raises(ValueError, match="kappa=1.5"):
    make_norm("adab2n", C, rngs=nnx.Rngs(0), kappa=1.5)
  with pytest.raises(ValueError, match="num_tasks=0"):
    make_norm("adab2n", C, rngs=nnx.Rngs(0), num_tasks=0)
  with pytest.raises(ValueError, match="momentum=1.0"):
    make_norm("adab2n", C, rngs=nnx.Rngs(0), momentum=1.0)


def test_state_round_trips_through_a_checkpoint_and_resume_is_exact(tmp_path):
  rng = np.random.default_rng(6)
  batches = [jnp.asarray(rng.normal(size=(6, 2, 2, C)) + s, jnp.float32) for s in range(10)]

  def fresh():
    return make_norm("adab2n", C, rngs=nnx.Rngs(0), kappa=0.4, num_tasks=2)

  straight = fresh()
  for x in batches:
    straight(x)
  first = fresh()
  for x in batches[:5]:
    first(x)
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(tmp_path / "norm", nnx.to_pure_dict(nnx.state(first)))
  checkpointer.wait_until_finished()
  resumed = fresh()
  graph, state = nnx.split(resumed)
  restored = checkpointer.restore(tmp_path / "norm", nnx.to_pure_dict(state))
  nnx.replace_by_pure_dict(state, restored)
  resumed = nnx.merge(graph, state)
  assert int(resumed.count[...]) == 5
  for x in batches[5:]:
    resumed(x)
  for name in ("mean", "var", "count"):
    np.testing.assert_array_equal(
      np.asarray(getattr(resumed, name)[...]), np.asarray(getattr(straight, name)[...])
    )
