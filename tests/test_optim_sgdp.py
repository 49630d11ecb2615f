"""SGDP in float64 against a NumPy re-statement of clovaai/AdamP v0.3.0 ``adamp/sgdp.py``
that keeps the official step's aliasing: without Nesterov ``d_p`` is the momentum buffer
itself and the projection subtracts in place, so the projected direction is carried in
the buffer (``project_momentum=True``, the default); ``project_momentum=False`` projects
a copy."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from normjax.optim import sgdp
from tests.test_optim_adamp import from_torch, to_torch


class OfficialSGDP:
  """``SGDP.step`` for one parameter at a time, torch layout, float64, in-place as in the
  official code (``copy_direction=True``: ``d_p = buf.copy()``, the legacy behaviour)."""

  def __init__(
    self,
    lr,
    momentum=0.0,
    dampening=0.0,
    weight_decay=0.0,
    nesterov=False,
    eps=1e-8,
    delta=0.1,
    wd_ratio=0.1,
    copy_direction=False,
  ):
    self.__dict__.update(locals())
    self.buffers, self.views = {}, {}

  def _projection(self, p, grad, perturb):
    expand = [-1] + [1] * (p.ndim - 1)
    views = {"channel": lambda x: x.reshape(x.shape[0], -1), "layer": lambda x: x.reshape(1, -1)}
    for name, view in views.items():
      x, y = view(grad), view(p)
      cosine = np.abs(
        np.sum(x * y, axis=1)
        / (
          np.maximum(np.linalg.norm(x, axis=1), self.eps)
          * np.maximum(np.linalg.norm(y, axis=1), self.eps)
        )
      )
      if cosine.max() < self.delta / math.sqrt(view(p).shape[1]):
        p_n = p / (np.linalg.norm(view(p), axis=1).reshape(expand) + self.eps)
        perturb -= p_n * np.sum(view(p_n * perturb), axis=1).reshape(expand)  # in place
        return perturb, self.wd_ratio, name
    return perturb, 1.0, None

  def step(self, name, p, grad):
    """Updates ``p`` (a float64 array) in place."""
    buf = self.buffers.setdefault(name, np.zeros_like(p))
    buf *= self.momentum
    buf += (1 - self.dampening) * grad
    if self.nesterov:
      d_p = grad + self.momentum * buf
    else:
      d_p = buf.copy() if self.copy_direction else buf
    ratio, view = 1.0, None
    if p.ndim > 1:
      d_p, ratio, view = self._projection(p, grad, d_p)
    if self.weight_decay > 0:
      p *= 1 - self.lr * self.weight_decay * ratio / (1 - self.momentum)
    p -= self.lr * d_p
    self.views[name] = view


def make_params(seed=0):
  rng = np.random.default_rng(seed)
  return {
    "dense_channel": rng.normal(size=(5, 4)),
    "dense_layer": rng.normal(size=(6, 3)),
    "dense_plain": rng.normal(size=(3, 4)),
    "conv_channel": rng.normal(size=(2, 2, 3, 4)),
    "conv_layer": rng.normal(size=(2, 2, 3, 6)),
    "conv_plain": rng.normal(size=(2, 2, 2, 3)),
    "bias": rng.normal(size=(4,)),
  }


VIEWS = {
  "dense_channel": "channel",
  "conv_channel": "channel",
  "dense_layer": "layer",
  "conv_layer": "layer",
  "dense_plain": None,
  "conv_plain": None,
  "bias": None,
}


def gradient(name, p, r):
  """Flax-layout gradient with the geometry its name says (output channel = last axis)."""
  if name.endswith("channel"):
    axes = tuple(range(p.ndim - 1))
    return r - p * np.sum(p * r, axis=axes) / np.sum(p * p, axis=axes)
  if name.endswith("layer"):  # radial per channel, with signs that cancel over the leaf
    sq = np.sum(p * p, axis=tuple(range(p.ndim - 1)))
    signs = np.where(np.arange(sq.size) % 2 == 0, 1.0, -1.0)
    signs = signs - sq * np.sum(signs * sq) / np.sum(sq * sq)  # sum_j signs_j |p_j|^2 = 0
    tangent = r - p * np.sum(p * r) / np.sum(p * p)
    return tangent + p * signs * np.linalg.norm(r) / np.sqrt(np.sum(sq))
  if name.endswith("plain"):  # a radial part as large as the rest: no view passes
    return r + p * np.linalg.norm(r) / np.linalg.norm(p)
  return r


def run(kw, steps=40, project_momentum=True, seed=0):
  """Float64 normjax ``sgdp`` and ``OfficialSGDP``: final parameters, Flax layout."""
  params = make_params(seed)
  reference = OfficialSGDP(copy_direction=not project_momentum, **kw)
  ref = {k: to_torch(v).copy() for k, v in params.items()}
  rng = np.random.default_rng(seed + 1)
  with jax.enable_x64(True):
    tx = sgdp(
      kw["lr"], project_momentum=project_momentum, **{k: v for k, v in kw.items() if k != "lr"}
    )
    p = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), params)
    state, update = tx.init(p), jax.jit(tx.update)
    for _ in range(steps):
      draws = {k: rng.normal(size=v.shape) for k, v in params.items()}
      grads = {k: jnp.asarray(gradient(k, np.asarray(p[k]), draws[k])) for k in params}
      updates, state = update(grads, state, p)
      p = optax.apply_updates(p, updates)
      for k in params:
        flax_p = from_torch(ref[k], params[k].ndim)
        reference.step(k, ref[k], to_torch(gradient(k, flax_p, draws[k])))
        assert reference.views[k] == VIEWS[k], (k, reference.views[k])
    assert all(x.dtype == jnp.float64 for x in jax.tree.leaves((p, state)) if x.ndim)
    got = {k: np.asarray(v) for k, v in p.items()}
  return got, {k: from_torch(v, params[k].ndim) for k, v in ref.items()}


def assert_close(got, want, rtol):
  for k in want:
    err = np.max(np.abs(got[k] - want[k])) / np.max(np.abs(want[k]))
    assert err < rtol, (k, err)


CASES = [
  dict(lr=0.05, momentum=0.9, weight_decay=0.02),
  dict(lr=0.05, momentum=0.9, weight_decay=0.02, nesterov=True),
  dict(lr=0.05, momentum=0.8, dampening=0.3, weight_decay=0.1),
  dict(lr=0.05, momentum=0.0, weight_decay=0.02),
]


@pytest.mark.parametrize("project_momentum", [True, False])
@pytest.mark.parametrize("kw", CASES)
def test_float64_matches_official_step(kw, project_momentum):
  got, want = run(kw, project_momentum=project_momentum)
  assert_close(got, want, rtol=1e-12)


def test_the_two_behaviours_differ_only_where_the_buffer_is_projected():
  """Without Nesterov the in-place projection changes the trajectory by O(1) on the
  leaves that pass the test, and nothing elsewhere; with Nesterov nothing changes."""
  kw = CASES[0]
  official, _ = run(kw, project_momentum=True)
  legacy, _ = run(kw, project_momentum=False)
  params = make_params()
  for k, view in VIEWS.items():
    moved = np.linalg.norm(official[k] - params[k])
    gap = np.linalg.norm(official[k] - legacy[k]) / moved
    assert (gap > 0.1) if view else (gap == 0.0), (k, gap)
  nesterov = [run(CASES[1], project_momentum=pm)[0] for pm in (True, False)]
  for k in VIEWS:
    np.testing.assert_array_equal(nesterov[0][k], nesterov[1][k])
