"""normjax.models.pooling.max_pool: forward and backward against lax and a numpy reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from normjax.models.pooling import max_pool

CASES = [  # (shape, window, strides, padding): the ResNet stem, odd sizes, no padding
  ((2, 12, 12, 3), (3, 3), (2, 2), ((1, 1), (1, 1))),
  ((2, 7, 9, 4), (3, 3), (2, 2), ((1, 1), (1, 1))),
  ((1, 8, 6, 2), (2, 2), (2, 2), ((0, 0), (0, 0))),
  ((1, 9, 9, 2), (3, 2), (2, 3), ((1, 0), (0, 1))),
]


def first_max_reference(x, window, strides, padding, dy):
  """numpy: y and dx with each cotangent sent to the first maximum of its window."""
  (kh, kw), (sh, sw) = window, strides
  xp = np.pad(x, ((0, 0), *padding, (0, 0)), constant_values=-np.inf)
  n, hp, wp, c = xp.shape
  oh, ow = (hp - kh) // sh + 1, (wp - kw) // sw + 1
  y, dxp = np.zeros((n, oh, ow, c)), np.zeros_like(xp)
  for b in range(n):
    for p in range(oh):
      for q in range(ow):
        for ch in range(c):
          win = xp[b, p * sh : p * sh + kh, q * sw : q * sw + kw, ch]
          i, j = np.unravel_index(np.argmax(win), win.shape)  # argmax: the first maximum
          y[b, p, q, ch] = win[i, j]
          dxp[b, p * sh + i, q * sw + j, ch] += dy[b, p, q, ch]
  (pt, _), (pl, _) = padding
  return y, dxp[:, pt : pt + x.shape[1], pl : pl + x.shape[2]]


@pytest.mark.parametrize("shape,window,strides,padding", CASES)
@pytest.mark.parametrize("ties", [False, True])
def test_against_first_max_reference(shape, window, strides, padding, ties):
  with jax.enable_x64(True):
    x = np.random.default_rng(0).standard_normal(shape)
    if ties:
      x = np.round(x)  # many equal values in a window: the first one takes the gradient
    pool = lambda x: max_pool(x, window, strides, padding)
    y, vjp = jax.vjp(pool, jnp.asarray(x))
    dy = np.random.default_rng(1).standard_normal(y.shape)
    ref_y, ref_dx = first_max_reference(x, window, strides, padding, dy)
    np.testing.assert_array_equal(y, ref_y)
    np.testing.assert_allclose(vjp(jnp.asarray(dy))[0], ref_dx, rtol=1e-12, atol=1e-12)


def test_matches_nnx_max_pool_and_its_gradient():
  x = jax.random.normal(jax.random.key(0), (2, 16, 16, 8))
  args = dict(strides=(2, 2), padding=((1, 1), (1, 1)))
  ours = lambda x: max_pool(x, (3, 3), **args)
  theirs = lambda x: nnx.max_pool(x, (3, 3), **args)
  np.testing.assert_array_equal(ours(x), theirs(x))
  dy = jax.random.normal(jax.random.key(1), ours(x).shape)
  grad = lambda f: jax.vjp(f, x)[1](dy)[0]
  np.testing.assert_allclose(grad(ours), grad(theirs), rtol=1e-6, atol=1e-6)


def test_rejects_other_layouts():
  with pytest.raises(ValueError, match="NHWC"):
    max_pool(jnp.ones((4, 4, 3)), (2, 2))
