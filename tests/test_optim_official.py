"""normjax's AdamP and SGDP against the official package (``pip install adamp==0.3.0``,
clovaai/AdamP v0.3.0) in float64 (torch double): the same parameters to 1e-10 relative
after 40 steps on scale-invariant (channel- and layer-wise), plain, conv and bias leaves,
weight decay on. Skipped when ``adamp`` or torch is not installed."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from normjax import optim
from tests.test_optim_adamp import from_torch, to_torch
from tests.test_optim_sgdp import assert_close, gradient, make_params

torch = pytest.importorskip("torch")
official = pytest.importorskip("adamp")

STEPS = 40


def run(torch_optimizer, tx, seed=0):
  params = make_params(seed)
  names = sorted(params)
  weights = {
    k: torch.tensor(to_torch(params[k]).copy(), dtype=torch.float64, requires_grad=True)
    for k in names
  }
  opt = torch_optimizer([weights[k] for k in names])
  rng = np.random.default_rng(seed + 1)
  with jax.enable_x64(True):
    p = jax.tree.map(jnp.asarray, params)
    state, update = tx.init(p), jax.jit(tx.update)
    for _ in range(STEPS):
      draws = {k: rng.normal(size=v.shape) for k, v in params.items()}
      grads = {k: jnp.asarray(gradient(k, np.asarray(p[k]), draws[k])) for k in names}
      updates, state = update(grads, state, p)
      p = optax.apply_updates(p, updates)
      for k in names:
        current = from_torch(weights[k].detach().numpy(), params[k].ndim)
        weights[k].grad = torch.tensor(
          to_torch(gradient(k, current, draws[k])).copy(), dtype=torch.float64
        )
      opt.step()
    got = {k: np.asarray(v) for k, v in p.items()}
  want = {k: from_torch(weights[k].detach().numpy(), params[k].ndim) for k in names}
  assert_close(got, want, rtol=1e-10)


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgdp_matches_the_official_package(nesterov):
  kw = dict(momentum=0.9, weight_decay=0.02, nesterov=nesterov)
  run(lambda ps: official.SGDP(ps, lr=0.05, **kw), optim.sgdp(0.05, **kw))


@pytest.mark.parametrize("nesterov", [False, True])
def test_adamp_matches_the_official_package(nesterov):
  kw = dict(weight_decay=0.05, nesterov=nesterov)
  run(
    lambda ps: official.AdamP(ps, lr=0.02, betas=(0.9, 0.999), **kw),
    optim.adamp(0.02, b1=0.9, b2=0.999, **kw),
  )


def test_legacy_sgdp_is_not_the_official_package():
  """``project_momentum=False`` (normjax's earlier SGDP) diverges from the official one."""
  kw = dict(momentum=0.9, weight_decay=0.02)
  with pytest.raises(AssertionError):
    run(lambda ps: official.SGDP(ps, lr=0.05, **kw), optim.sgdp(0.05, project_momentum=False, **kw))
