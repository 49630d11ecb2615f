"""grassmann_rsgd (GCR's Riemannian SGD, normjax/optim/_grassmann.py) against a float64
re-statement of the official step (innerlee/GCR gcr/rsgd.py, geometry branch), its invariants,
the lr_factor coupling through the trainer's optimizer groups, state round trip, refusals."""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from normjax.optim import OPTIMIZERS, build, grassmann_rsgd, labels, scale_by_grassmann_rsgd
from tests import optim_harness as harness


class OfficialRSGD:
  """innerlee/GCR ``RSGD`` on one geometry parameter, in NumPy float64, in the official layout:
  the head's Linear weight W (K * k, d), class i's basis = rows i*k .. (i+1)*k - 1, transposed.
  The module-level counter ``OPT_ITER`` is ``self.opt_iter`` (one geometry parameter)."""

  def __init__(self, lr, momentum, k, reorth_step, lr_factor=1.0, dampening=0.0):
    self.lr, self.momentum, self.k = lr, momentum, k
    self.reorth_step, self.lr_factor, self.dampening = reorth_step, lr_factor, dampening
    self.buf, self.opt_iter, self.t = None, 0, 0

  def step(self, weight, grad):
    d_p = grad
    if self.momentum != 0:
      if self.buf is None:
        self.buf = d_p.copy()
      else:
        self.buf = self.buf * self.momentum + (1 - self.dampening) * d_p
      d_p = self.buf
    alpha = -(self.lr(self.t) if callable(self.lr) else self.lr)
    self.t += 1
    k, d = self.k, weight.shape[1]
    batch_p = weight.reshape(-1, k, d).transpose(0, 2, 1)
    batch_d = d_p.reshape(-1, k, d).transpose(0, 2, 1)
    batch_g = batch_d - batch_p @ (weight.reshape(-1, k, d) @ batch_d)
    u, s, vt = np.linalg.svd(batch_g, full_matrices=False)
    angle = (alpha * self.lr_factor) * s
    new = (
      (batch_p @ vt.transpose(0, 2, 1)) * np.cos(angle)[:, None, :] + u * np.sin(angle)[:, None, :]
    ) @ vt
    if self.opt_iter % self.reorth_step == 0:
      new = np.linalg.qr(new)[0]
    self.opt_iter += 1
    return new.transpose(0, 2, 1).reshape(-1, d)


def to_ours(weight, k):  # (K * k, d) -> (K, d, k)
  return weight.reshape(-1, k, weight.shape[1]).transpose(0, 2, 1)


def random_bases(rng, num_classes, d, k):
  return np.linalg.qr(rng.standard_normal((num_classes, d, k)))[0]


@pytest.mark.parametrize("k", [1, 4])
@pytest.mark.parametrize("momentum,dampening", [(0.9, 0.0), (0.5, 0.3), (0.0, 0.0)])
def test_matches_the_official_step_in_float64(k, momentum, dampening):
  rng = np.random.default_rng(k)
  num_classes, d, steps, reorth = 3, 16, 7, 3
  bases = random_bases(rng, num_classes, d, k)
  weight = bases.transpose(0, 2, 1).reshape(-1, d)
  grads = [rng.standard_normal(weight.shape) for _ in range(steps)]
  schedule = lambda t: 0.3 * (1.0 - t / 10)
  official = OfficialRSGD(schedule, momentum, k, reorth, lr_factor=0.7, dampening=dampening)
  with jax.enable_x64(True):
    tx = scale_by_grassmann_rsgd(
      lambda t: 0.3 * (1.0 - jnp.asarray(t, jnp.float64) / 10),
      momentum,
      dampening,
      reorth_every=reorth,
      lr_factor=0.7,
    )
    params = {"head": {"grassmann_basis": jnp.asarray(bases)}}
    state = tx.init(params)
    update = jax.jit(tx.update)
    for g in grads:
      weight = official.step(weight, g)
      updates, state = update(
        {"head": {"grassmann_basis": jnp.asarray(to_ours(g, k))}}, state, params
      )
      params = optax.apply_updates(params, updates)
      np.testing.assert_allclose(
        np.asarray(params["head"]["grassmann_basis"]), to_ours(weight, k), rtol=0, atol=1e-12
      )
    assert int(state.count) == steps


def test_bases_stay_orthonormal_over_many_float32_steps():
  rng = np.random.default_rng(0)
  bases = jnp.asarray(random_bases(rng, 5, 32, 8), jnp.float32)
  tx = grassmann_rsgd(0.2, momentum=0.9, reorth_every=5)
  state = tx.init(bases)

  def body(carry, g):
    p, s = carry
    u, s = tx.update(g, s, p)
    p = optax.apply_updates(p, u)
    gram = jnp.swapaxes(p, -1, -2) @ p
    return (p, s), jnp.max(jnp.abs(gram - jnp.eye(8)))

  grads = jnp.asarray(rng.standard_normal((100, *bases.shape)), jnp.float32)
  (final, _), errors = jax.jit(lambda c, g: jax.lax.scan(body, c, g))((bases, state), grads)
  assert float(jnp.max(errors)) < 1e-5, float(jnp.max(errors))
  assert float(jnp.max(jnp.abs(final - bases))) > 0.1  # it moved


@pytest.mark.parametrize("k", [1, 3])
def test_principal_angles_of_one_step_are_lr_times_singular_values(k):
  rng = np.random.default_rng(3)
  with jax.enable_x64(True):
    bases = random_bases(rng, 2, 10, k)
    grad = 0.5 * rng.standard_normal(bases.shape)
    lr = 0.4
    tangent = grad - bases @ (bases.transpose(0, 2, 1) @ grad)
    s = np.linalg.svd(tangent, compute_uv=False)
    assert np.all(lr * s < math.pi / 2)
    tx = grassmann_rsgd(lr, momentum=0.0, reorth_every=1000)
    state = tx.init(jnp.asarray(bases))
    state = state._replace(count=jnp.asarray(1, jnp.int32))  # no QR at this step
    updates, _ = tx.update(jnp.asarray(grad), state, jnp.asarray(bases))
    new = bases + np.asarray(updates)
    np.testing.assert_allclose(
      new.transpose(0, 2, 1) @ new, np.broadcast_to(np.eye(k), (2, k, k)), atol=1e-12
    )
    cosines = np.linalg.svd(bases.transpose(0, 2, 1) @ new, compute_uv=False)
    angles = np.sort(np.arccos(np.clip(cosines, -1, 1)), axis=-1)
    np.testing.assert_allclose(angles, np.sort(lr * s, axis=-1), atol=1e-7)


def test_zero_gradient_is_the_identity_and_qr_sign_fix_is_optional():
  rng = np.random.default_rng(4)
  bases = jnp.asarray(random_bases(rng, 3, 8, 2), jnp.float32)
  for fix in (False, True):
    tx = grassmann_rsgd(0.5, reorth_every=1000, qr_sign_fix=fix)
    state = tx.init(bases)._replace(count=jnp.asarray(1, jnp.int32))
    updates, _ = tx.update(jnp.zeros_like(bases), state, bases)
    np.testing.assert_array_equal(np.asarray(updates), 0.0)
  # at a QR step: the Q of LAPACK's QR, or with the fix Q * sign(diag R)
  flipped = bases * jnp.asarray([1.0, -1.0])
  q, r = np.linalg.qr(np.asarray(flipped))
  signs = np.sign(np.diagonal(r, axis1=-2, axis2=-1))[..., None, :]
  assert np.any(signs < 0)
  for fix, want in ((False, q), (True, q * signs)):
    tx = grassmann_rsgd(0.5, reorth_every=1, qr_sign_fix=fix)
    updates, _ = tx.update(jnp.zeros_like(bases), tx.init(flipped), flipped)
    np.testing.assert_allclose(np.asarray(flipped + updates), want, atol=1e-6)


def test_lr_factor_couples_to_the_rest_of_the_model_schedule():
  """A config group ``grassmann`` inherits the top-level AdamW schedule; its step is the
  official RAdamW coupling: RSGD lr = AdamW lr(t) * lr_factor."""
  rng = np.random.default_rng(5)
  k, steps = 2, 6
  bases = random_bases(rng, 3, 6, k).astype(np.float32)
  params = {"head": {"grassmann_basis": jnp.asarray(bases)}, "dense": {"kernel": jnp.ones((6, 3))}}
  config = ml_collections.ConfigDict(
    dict(
      optimizer=dict(
        name="adamw",
        learning_rate=1e-3,
        weight_decay=0.05,
        labels="manifold_groups",
        groups={
          "grassmann": {
            "name": "grassmann_rsgd",
            "weight_decay": 0.0,
            "lr_factor": 300.0,
            "reorth_every": 1,
          },
          "euclidean": {},
        },
      ),
      schedule=dict(warmup_steps=2, decay="cosine", final_fraction=0.0),
    )
  )
  tx, schedule = build.make_optimizer(config, total_steps=steps)
  official = OfficialRSGD(lambda t: float(schedule(t)), 0.9, k, reorth_step=1, lr_factor=300.0)
  weight = bases.astype(np.float64).transpose(0, 2, 1).reshape(-1, 6)
  state = tx.init(params)
  for _ in range(steps):
    g = rng.standard_normal(weight.shape)
    grads = {
      "head": {"grassmann_basis": jnp.asarray(to_ours(g, k), jnp.float32)},
      "dense": {"kernel": jnp.ones((6, 3))},
    }
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
    weight = official.step(weight, g)
    np.testing.assert_allclose(
      np.asarray(params["head"]["grassmann_basis"]), to_ours(weight, k), atol=2e-5
    )
  assert not labels.decay_mask(params)["head"]["grassmann_basis"]
  assert labels.manifold_groups(params)["head"]["grassmann_basis"] == "grassmann"


def test_state_round_trips_a_checkpoint_and_resumes_exactly(tmp_path):
  rng = np.random.default_rng(6)
  bases = jnp.asarray(random_bases(rng, 3, 8, 2), jnp.float32)
  grads = [jnp.asarray(rng.standard_normal(bases.shape), jnp.float32) for _ in range(5)]
  tx = grassmann_rsgd(0.3, momentum=0.9, reorth_every=3)
  update = jax.jit(tx.update)

  def run(params, state, gs):
    for g in gs:
      u, state = update(g, state, params)
      params = optax.apply_updates(params, u)
    return params, state

  straight, _ = run(bases, tx.init(bases), grads)
  params, state = run(bases, tx.init(bases), grads[:2])
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(tmp_path / "opt", {"params": params, "state": state})
  checkpointer.wait_until_finished()
  target = {"params": params, "state": tx.init(bases)}
  restored = checkpointer.restore(
    tmp_path / "opt", jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
  )
  assert int(restored["state"].count) == 2
  resumed, _ = run(restored["params"], restored["state"], grads[2:])
  np.testing.assert_array_equal(np.asarray(resumed), np.asarray(straight))
  # a lost counter (count 0) would re-take the first-step momentum rule and the QR schedule
  lost, _ = run(restored["params"], tx.init(bases), grads[2:])
  assert float(jnp.max(jnp.abs(lost - straight))) > 1e-4


def test_inject_hyperparams_jit_and_harness():
  rng = np.random.default_rng(7)
  params = {"b": jnp.asarray(random_bases(rng, 2, 6, 3), jnp.float32)}
  grads = {"b": jnp.asarray(rng.standard_normal((2, 6, 3)), jnp.float32)}
  harness.check_inject_hyperparams(
    grassmann_rsgd,
    dict(learning_rate=0.1, momentum=0.9, reorth_every=2, lr_factor=0.5),
    params,
    grads,
    steps=4,
  )
  assert OPTIMIZERS.get("grassmann_rsgd") is grassmann_rsgd


@pytest.mark.parametrize(
  "kwargs,message",
  [
    (dict(momentum=-0.1), "momentum=-0.1"),
    (dict(momentum=1.5), "momentum=1.5"),
    (dict(dampening=2.0), "dampening=2.0"),
    (dict(reorth_every=0), "reorth_every=0"),
    (dict(reorth_every=2.5), "reorth_every=2.5"),
    (dict(lr_factor=-1.0), "lr_factor=-1.0"),
    (dict(learning_rate=-0.1), "learning_rate=-0.1"),
    (dict(weight_decay=1e-4), "weight_decay=0.0001"),
  ],
)
def test_bad_hyperparameters_fail_with_a_message(kwargs, message):
  kwargs = {"learning_rate": 0.1, **kwargs}
  with pytest.raises(ValueError, match=message.replace(".", r"\.")):
    grassmann_rsgd(**kwargs)


def test_a_basis_wider_than_its_features_or_missing_params_fail():
  tx = grassmann_rsgd(0.1)
  with pytest.raises(ValueError, match="d >= k"):
    tx.init(jnp.zeros((2, 3, 4)))
  with pytest.raises(ValueError, match="needs params"):
    tx.update(jnp.zeros((2, 4, 3)), tx.init(jnp.zeros((2, 4, 3))))
