"""SOFT attention (normjax.models.soft_attention) against float64 references from the formulas.

NumPy/torch float64 restatements of fudan-zvg/SOFT ``newton_inv``, ``SoftmaxFreeNormAttention
Kernel.newton_inv`` and the attention kernel with the official tensor layouts (the per-head
DWConv on V laid out as (B*d, h, H, W), the landmark conv on (B*h, d, H, W)).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from flax import nnx

from normjax.models import make_model
from normjax.models import soft_attention as sa
from normjax.models.transformer import LinearInits


def kappa(a, b):
  return np.exp(-((a[..., :, None, :] - b[..., None, :, :]) ** 2).sum(-1) / 2)


def landmark_matrix(scale, m=16, d=8, batch=(2, 3), seed=0):
  points = np.random.default_rng(seed).normal(size=(*batch, m, d)) * scale
  return kappa(points, points)


def reference_newton(mat, iters, reg=0.01):
  """SOFT/kernel/inverse.py newton_inv, in NumPy: every iterate."""
  p = mat + reg * np.eye(mat.shape[-1])
  alpha = 0.9 * 2 / mat.sum(-1).max(-1) ** 2
  v = alpha[..., None, None] * p
  iterates = []
  for _ in range(iters):
    v = 2 * v - v @ p @ v
    iterates.append(v)
  return iterates


def reference_sym_pinv(mat, iters):
  """SoftmaxFreeNormAttentionKernel.newton_inv in NumPy: (V, halvings)."""
  eye = np.eye(mat.shape[-1])
  alpha = 2 / mat.sum(-1).max() ** 2
  pnorm = lambda a: np.abs(eye - mat @ (a * mat)).sum(-2).max()
  count = 0
  while pnorm(alpha) > 1.01 and count < 10:
    alpha *= 0.5
    count += 1
  v = alpha * mat
  for _ in range(iters):
    v = 2 * v - v @ mat @ v
  return v, count


WELL, ILL = 0.5, 0.1  # landmark spread: cond(A2 + .01 I) ~ 40 vs ~ 1400


def test_gaussian_kernel_both_distances_match_the_direct_formula():
  rng = np.random.default_rng(1)
  a, b = rng.normal(size=(2, 7, 5)), rng.normal(size=(2, 4, 5))
  with jax.enable_x64(True):
    for distance in sa.DISTANCES:
      got = sa.gaussian_kernel(jnp.asarray(a), jnp.asarray(b), distance=distance)
      np.testing.assert_allclose(np.asarray(got), kappa(a, b), rtol=1e-13, atol=1e-15)


def test_newton_inverse_equals_the_regularized_inverse_when_it_converges():
  mat = landmark_matrix(WELL)
  with jax.enable_x64(True):
    got = np.asarray(sa.newton_inverse(jnp.asarray(mat), 20, 0.01))
  exact = np.linalg.inv(mat + 0.01 * np.eye(16))
  assert np.linalg.norm(got - exact) / np.linalg.norm(exact) < 1e-10
  # ... of A2 + 0.01 I, not of A2 itself
  assert np.linalg.norm(got - np.linalg.inv(mat)) / np.linalg.norm(exact) > 1e-3


def test_newton_inverse_follows_the_official_iterates_when_it_does_not_converge():
  mat = landmark_matrix(ILL)
  iterates = reference_newton(mat, 20)
  exact = np.linalg.inv(mat + 0.01 * np.eye(16))
  assert np.linalg.norm(iterates[-1] - exact) / np.linalg.norm(exact) > 0.1  # truly unconverged
  with jax.enable_x64(True):
    for k in (1, 2, 5, 11, 20):
      got = np.asarray(sa.newton_inverse(jnp.asarray(mat), k, 0.01))
      np.testing.assert_allclose(got, iterates[k - 1], rtol=1e-9, atol=1e-12)


def test_custom_vjp_is_the_closed_form_and_matches_finite_differences_when_converged():
  rng = np.random.default_rng(2)
  with jax.enable_x64(True):
    for scale in (WELL, ILL):
      mat = jnp.asarray(landmark_matrix(scale))
      cot = jnp.asarray(rng.normal(size=mat.shape))
      v, vjp = jax.vjp(lambda a: sa.newton_inverse(a, 20, 0.01), mat)
      vt = np.swapaxes(np.asarray(v), -1, -2)
      np.testing.assert_allclose(
        np.asarray(vjp(cot)[0]), -vt @ np.asarray(cot) @ vt, rtol=1e-12, atol=1e-14
      )
    mat = jnp.asarray(landmark_matrix(WELL))
    loss = lambda a: jnp.sum(cot * sa.newton_inverse(a, 20, 0.01))
    grad = np.asarray(jax.grad(loss)(mat))
    direction = jnp.asarray(rng.normal(size=mat.shape))
    h = 1e-6
    fd = (loss(mat + h * direction) - loss(mat - h * direction)) / (2 * h)
    np.testing.assert_allclose(np.sum(grad * np.asarray(direction)), float(fd), rtol=1e-6)


def test_soft_norm_iteration_halvings_and_autodiff_match_the_official_loop():
  for scale in (WELL, ILL):
    mat = landmark_matrix(scale)
    want, count = reference_sym_pinv(mat, 20)
    with jax.enable_x64(True):
      got, halvings = sa.symmetric_newton_pinv(jnp.asarray(mat), 20)
      assert int(halvings) == count and count > 0
      np.testing.assert_allclose(np.asarray(got), want, rtol=1e-9, atol=1e-12)
  rng = np.random.default_rng(3)
  cot = rng.normal(size=mat.shape)
  with jax.enable_x64(True):
    grad = np.asarray(
      jax.grad(lambda a: jnp.sum(cot * sa.symmetric_newton_pinv(a, 20)[0]))(jnp.asarray(mat))
    )
  direction = rng.normal(size=mat.shape)
  h = 1e-6
  numeric = lambda a: np.sum(cot * reference_sym_pinv(a, 20)[0])
  fd = (numeric(mat + h * direction) - numeric(mat - h * direction)) / (2 * h)
  np.testing.assert_allclose(np.sum(grad * direction), fd, rtol=1e-5)


def test_kernel_attention_with_every_token_a_landmark_is_the_closed_form():
  rng = np.random.default_rng(4)
  q = rng.normal(size=(2, 2, 12, 6)) * 0.6
  v = rng.normal(size=(2, 2, 12, 6))
  k = kappa(q, q)
  eye = np.eye(12)
  with jax.enable_x64(True):
    run = lambda kind, iters: np.asarray(
      sa.kernel_attention(jnp.asarray(q), jnp.asarray(q), jnp.asarray(v), kind=kind, iters=iters)
    )
    np.testing.assert_allclose(run("soft", 20), k @ np.linalg.inv(k + 0.01 * eye) @ k @ v, 1e-9)
    scale = 1 / np.sqrt(k.sum(-1))
    norm = k @ (scale[..., :, None] * np.linalg.inv(k) * scale[..., None, :]) @ k @ v
    np.testing.assert_allclose(run("soft_norm", 60), norm, rtol=1e-8)
    np.testing.assert_allclose(run("gaussian", 1), k @ v, rtol=1e-12)


# ----------------------------------------------------------------- the module, official layouts
GRID, HEADS, HEAD_DIM = (4, 4), 2, 4


def build(kind, dtype=jnp.float64, **kwargs):
  xavier = nnx.initializers.xavier_uniform()
  inits = LinearInits(xavier, xavier, xavier, xavier)
  return sa.SoftmaxFreeAttention(
    HEADS * HEAD_DIM,
    HEADS,
    kind=kind,
    grid=GRID,
    causal=False,
    inits=inits,
    dtype=dtype,
    rngs=nnx.Rngs(0),
    **kwargs,
  )


def torch_reference(module, x, kind, ratio, iters=20):
  """The official SoftmaxFree(Norm)Attention forward in torch float64, from ``module``'s params."""
  t = lambda a: torch.tensor(np.asarray(a[...]), dtype=torch.float64)
  b, n, _ = x.shape
  h, d, (hh, ww) = HEADS, HEAD_DIM, GRID
  split = lambda y: y.reshape(b, n, h, d).transpose(1, 2)
  x = torch.tensor(np.asarray(x))
  q = split(x @ t(module.query.kernel) + t(module.query.bias)) / d**0.25
  v = split(x @ t(module.value.kernel) + t(module.value.bias))
  if kind == "gaussian":
    out = torch.exp(-(torch.cdist(q, q) ** 2) / 2) @ v
  else:
    weight = t(module.landmark_kernel).permute(3, 2, 0, 1)
    maps = q.reshape(b * h, hh, ww, d).permute(0, 3, 1, 2)
    lm = F.conv2d(maps, weight, stride=ratio).flatten(2).transpose(1, 2).reshape(b, h, -1, d)
    ln = module.landmark_norm
    lm = F.gelu(F.layer_norm(lm, (d,), t(ln.scale), t(ln.bias), 1e-5))
    sq = lambda a, c: (a**2).sum(-1)[..., :, None] + (c**2).sum(-1)[..., None, :] - 2 * a @ c.mT
    k1, k2 = torch.exp(-sq(q, lm) / 2), torch.exp(-sq(lm, lm) / 2)
    if kind == "soft":
      inv = torch.tensor(reference_newton(k2.numpy(), iters)[-1])
    else:
      pinv = torch.tensor(reference_sym_pinv(k2.numpy(), iters)[0])
      dsym = 1 / k2.sum(-1, keepdim=True).sqrt()
      inv = dsym * pinv * dsym.mT
    out = (k1 @ inv) @ (k1.mT @ v)
  weight = t(module.value_conv).permute(3, 2, 0, 1)  # (h, 1, k, k)
  vmap = v.reshape(b, h, hh, ww, d).permute(0, 4, 1, 2, 3).reshape(b * d, h, hh, ww)
  conv = F.conv2d(vmap, weight, padding=weight.shape[-1] // 2, groups=h)
  out = out + conv.reshape(b, d, h, hh, ww).flatten(3).permute(0, 2, 3, 1)
  out = out.transpose(1, 2).reshape(b, n, h * d)
  return (out @ t(module.proj.kernel) + t(module.proj.bias)).numpy()


@pytest.mark.parametrize(
  "kind,ratio,conv", [("soft", 2, 3), ("soft_norm", 2, 3), ("gaussian", 2, 3), ("soft", 1, 1)]
)
def test_module_matches_the_official_layouts_in_torch_float64(kind, ratio, conv):
  with jax.enable_x64(True):
    module = build(kind, ratio=ratio, conv_size=conv)
    if kind != "gaussian":  # a non-trivial LayerNorm affine
      ln = module.landmark_norm
      ln.scale[...] = 1 + 0.3 * jax.random.normal(jax.random.key(1), ln.scale.shape, jnp.float64)
      ln.bias[...] = 0.3 * jax.random.normal(jax.random.key(2), ln.bias.shape, jnp.float64)
    x = np.random.default_rng(5).normal(size=(2, 16, HEADS * HEAD_DIM))
    got = np.asarray(module(jnp.asarray(x)))
  np.testing.assert_allclose(got, torch_reference(module, x, kind, ratio), rtol=1e-9, atol=1e-11)


def test_direct_and_expanded_distances_agree_and_bfloat16_stays_finite():
  call = nnx.jit(lambda module, x: module(x))
  x = jax.random.normal(jax.random.key(0), (2, 16, HEADS * HEAD_DIM))
  a, b = build("soft", jnp.float32), build("soft", jnp.float32, distance="direct")
  np.testing.assert_allclose(np.asarray(call(a, x)), np.asarray(call(b, x)), rtol=2e-4, atol=2e-5)
  low = build("soft_norm", jnp.bfloat16)
  out = call(low, x.astype(jnp.bfloat16))
  assert out.dtype == jnp.bfloat16 and np.isfinite(np.asarray(out, np.float32)).all()


@pytest.mark.parametrize(
  "name,kwargs,message",
  [
    ("gpt2", dict(attention="soft"), "attention='soft'.*non-causal.*'softmax' only"),
    ("gpt2", dict(attention="flash"), "attention='flash': valid choices"),
    ("vit", dict(attention="soft", pool="cls"), "attention='soft' needs pool='mean'"),
    ("vit", dict(attention="soft", attention_kwargs=dict(rank=3)), "unknown rank; ratio"),
    ("vit", dict(attention_kwargs=dict(ratio=2)), "unknown ratio; none for attention='softmax'"),
    ("vit", dict(attention="soft", attention_kwargs=dict(conv_size=2)), "conv_size=2: odd"),
    ("vit", dict(attention="nystrom"), "attention='nystrom': valid choices are 'softmax'"),
  ],
)
def test_bad_attention_arguments_fail_naming_the_key(name, kwargs, message):
  common = dict(width=8, depth=1, num_heads=2)
  sizes = (
    dict(vocab_size=11, max_len=8, **common)
    if name == "gpt2"
    else dict(num_classes=3, image_size=4, in_channels=1, patch_size=1, mlp_dim=8, **common)
  )
  kwargs = {"pool": "mean", **kwargs} if name == "vit" else kwargs
  with pytest.raises(ValueError, match=message):
    make_model(name, rngs=nnx.Rngs(0), **sizes, **kwargs)
