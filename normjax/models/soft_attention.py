"""SOFT: softmax-free self-attention with a Gaussian kernel and a Newton-iteration inverse.

Lu et al., "SOFT: Softmax-free Transformer with Linear Complexity" (NeurIPS 2021, arXiv
2110.11945) and "Softmax-free Linear Transformers" (IJCV 2024, arXiv 2207.03341). Official code:
fudan-zvg/SOFT, ``models/softmax_free_transformer.py`` (``SoftmaxFreeAttentionKernel``,
``SoftmaxFreeNormAttentionKernel``) and ``SOFT/kernel/inverse.py`` (``newton_inv``,
``_NewtonInverseKernel``). Per head, N = H*W tokens, head dim d:

* Q = W_q x (with bias), **K = Q** (tied, no W_k), V = W_v x; Q <- Q / d^(1/4).
* landmarks Q~ (m = (H/r)*(W/r) of them): each head's Q laid out as a d-channel H x W map, a
  Conv2d(d -> d, kernel r, stride r, no bias; one conv shared by the heads), then LayerNorm(d)
  (eps 1e-5, affine) and the exact (erf) GELU.
* kappa(a, b) = exp(-||a - b||^2 / 2), i.e. exp(-||q - k||^2 / (2 sqrt d)) on the unscaled
  vectors; A1 = kappa(Q, Q~) (N x m), A2 = kappa(Q~, Q~) (m x m).
* 'soft':      X = (A1 NewtonInv(A2)) (A1^T V) + DWConv(V).
* 'soft_norm': X = (A1 D^-1/2 A2^+ D^-1/2) (A1^T V) + DWConv(V), D = diag(rowsum A2).
* 'gaussian':  X = kappa(Q, Q) V + DWConv(V), the exact N x N kernel SOFT approximates
  (quadratic; it separates the approximation error from the choice of kernel).
* DWConv: Conv2d(h -> h, k x k, padding k//2, groups h, no bias) on V laid out as
  (B*d, h, H, W): one k x k spatial filter per head, shared by that head's d channels.
  ``conv_size=0`` drops it.

``newton_inverse`` is the official forward, which inverts A2 + 0.01 I (not the Moore-Penrose
inverse of A2): alpha = 0.9 * 2 / (max_i rowsum_i A2)^2 per matrix, V0 = alpha (A2 + 0.01 I),
``iters`` x (V <- 2V - V P V); its backward is the closed form of an exact inverse,
dL/dA2 = -V^T G V^T, computed once from the forward iterate (``jax.custom_vjp``). That gradient
is exact only when the iteration has converged (well separated landmarks); otherwise the
forward is a spectrally truncated inverse whose true derivative differs.

``symmetric_newton_pinv`` (SOFT-Norm): alpha = 2 / (max rowsum)^2 with the max over the WHOLE
batch and all heads; while ||I - A2 (alpha A2)||_1 (max column sum, again over everything) >
1.01 and fewer than 10 halvings: alpha <- alpha / 2; V0 = alpha A2 (no 0.01 I), ``iters``
Newton steps, and ordinary autodiff through the iterations (and through alpha; the halving
count itself is a step function, so it is computed on stopped values in a ``lax.while_loop``
and enters as alpha0 * 0.5^count, which has the same derivative as the official loop).

The official SOFT-Norm kernel cannot be built as shipped: its ``__init__`` calls
``super(SoftmaxFreeSymNormAttentionKernel, self)``, a class defined nowhere (NameError). What it
evidently intends, and what is implemented, is ``SoftmaxFreeAttentionKernel.__init__`` (same
landmark conv, LayerNorm, GELU and DWConv) with the forward the class defines.

Choices of this port (documented deviations): (1) the official ratio-1 branch references an
undefined ``self.num_landmarks`` and computes kappa(Q~, Q~) V; here ``ratio=1`` is the general
formula with a 1 x 1 conv (m = N). (2) No class token: the token map must be the full H x W
grid (ViT ``pool='mean'``), as in SOFT's stages 1-3. (3) ``distance='expanded'`` is the
official "torch" kernel ||a||^2 + ||b||^2 - 2 a.b (the shipped configs' choice),
``'direct'`` the CUDA kernel's sum (a - b)^2. (4) The kernel, the inverse and the products run
in float32 at least (bfloat16 activations are promoted), and the Newton matmuls at
``Precision.HIGHEST`` (no TF32), since the iteration squares its errors. (5) W_q, W_v and the
output projection take the model's attention initializers (normjax ViT: Xavier uniform), not the
official trunc-normal(0.02), so that only the attention mechanism differs from softmax; the two
convs keep PyTorch's default init U(+-1/sqrt(fan_in)).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from normjax.models import check_choice

ATTENTIONS = ("softmax", "soft", "soft_norm", "gaussian")
DISTANCES = ("expanded", "direct")
OPTIONS = ("ratio", "conv_size", "newton_iters", "reg", "distance")
HIGHEST = jax.lax.Precision.HIGHEST


def _mm(a, b):
  return jnp.matmul(a, b, precision=HIGHEST)


def gaussian_kernel(a: jax.Array, b: jax.Array, *, distance: str = "expanded") -> jax.Array:
  """exp(-||a_i - b_j||^2 / 2) for a (..., n, d), b (..., m, d) -> (..., n, m)."""
  check_choice("attention_kwargs.distance", distance, DISTANCES)
  if distance == "expanded":
    squared = (
      jnp.sum(a * a, -1)[..., :, None]
      + jnp.sum(b * b, -1)[..., None, :]
      - 2.0 * jnp.einsum("...nd,...md->...nm", a, b, precision=HIGHEST)
    )
  else:
    squared = jnp.sum(jnp.square(a[..., :, None, :] - b[..., None, :, :]), -1)
  return jnp.exp(-squared / 2.0)


def newton_steps(p: jax.Array, v: jax.Array, iters: int) -> jax.Array:
  """``iters`` Newton-Schulz steps V <- 2V - V P V from V (differentiable)."""
  return jax.lax.fori_loop(0, iters, lambda _, v: 2.0 * v - _mm(_mm(v, p), v), v)


def _newton_forward(mat, iters, reg):
  alpha = 0.9 * 2.0 / jnp.max(jnp.sum(mat, -1), -1) ** 2
  p = mat + reg * jnp.eye(mat.shape[-1], dtype=mat.dtype)
  return newton_steps(p, alpha[..., None, None] * p, iters)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def newton_inverse(mat: jax.Array, iters: int = 20, reg: float = 0.01) -> jax.Array:
  """The official SOFT inverse of (mat + reg I) (..., m, m); backward -V^T G V^T."""
  return _newton_forward(mat, iters, reg)


def _newton_fwd(mat, iters, reg):
  v = _newton_forward(mat, iters, reg)
  return v, v


def _newton_bwd(iters, reg, v, g):
  vt = jnp.swapaxes(v, -1, -2)
  return (-_mm(_mm(vt, g), vt),)


newton_inverse.defvjp(_newton_fwd, _newton_bwd)


def _one_norm_residual(mat, alpha):
  """max over everything of the column sums of |I - mat (alpha mat)| (the official pnorm)."""
  eye = jnp.eye(mat.shape[-1], dtype=mat.dtype)
  return jnp.max(jnp.sum(jnp.abs(eye - _mm(mat, alpha * mat)), -2))


def step_halvings(mat, alpha0, *, max_halvings: int = 10, tol: float = 1.01) -> jax.Array:
  """How many times SOFT-Norm halves alpha: while residual > tol and count < max_halvings."""

  def cond(state):
    count, residual = state
    return (residual > tol) & (count < max_halvings)

  def body(state):
    count, _ = state
    return count + 1, _one_norm_residual(mat, alpha0 * 0.5 ** (count + 1))

  start = (jnp.zeros((), jnp.int32), _one_norm_residual(mat, alpha0))
  return jax.lax.while_loop(cond, body, start)[0]


def symmetric_newton_pinv(mat: jax.Array, iters: int = 20) -> tuple[jax.Array, jax.Array]:
  """SOFT-Norm's Newton iteration for A2^+ (plain autodiff): (V, number of alpha halvings)."""
  alpha0 = 2.0 / jnp.max(jnp.sum(mat, -1)) ** 2
  halvings = step_halvings(jax.lax.stop_gradient(mat), jax.lax.stop_gradient(alpha0))
  alpha = alpha0 * jnp.asarray(0.5, mat.dtype) ** halvings
  return newton_steps(mat, alpha * mat, iters), halvings


def landmark_inverse(a2, *, kind: str, iters: int, reg: float) -> jax.Array:
  """The m x m middle factor: NewtonInv(A2) ('soft') or D^-1/2 A2^+ D^-1/2 ('soft_norm')."""
  if kind == "soft":
    return newton_inverse(a2, iters, reg)
  pinv, _ = symmetric_newton_pinv(a2, iters)
  scale = 1.0 / jnp.sqrt(jnp.sum(a2, -1))
  return scale[..., :, None] * pinv * scale[..., None, :]


def kernel_attention(q, landmarks, v, *, kind, iters=20, reg=0.01, distance="expanded"):
  """SOFT's kernel part for q, v (B, h, N, d) (q already scaled by d^-1/4) and landmarks
  (B, h, m, d): (A1 M)(A1^T V) with M from ``landmark_inverse``, or kappa(Q, Q) V for
  'gaussian' (landmarks unused)."""
  if kind == "gaussian":
    return _mm(gaussian_kernel(q, q, distance=distance), v)
  a1 = gaussian_kernel(q, landmarks, distance=distance)
  a2 = gaussian_kernel(landmarks, landmarks, distance=distance)
  middle = landmark_inverse(a2, kind=kind, iters=iters, reg=reg)
  return _mm(_mm(a1, middle), _mm(jnp.swapaxes(a1, -1, -2), v))


def torch_default_conv_init():
  """PyTorch's Conv2d default, kaiming_uniform(a=sqrt(5)): U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  return nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


class SoftmaxFreeAttention(nnx.Module):
  """SOFT self-attention on an H x W token map; a drop-in for ``MultiHeadSelfAttention``.

  ``kind``: 'soft' | 'soft_norm' | 'gaussian'; ``grid``: (H, W), the token map (T = H*W);
  ``ratio``: landmark conv kernel = stride r; ``conv_size``: the DWConv kernel (odd; 0 = none);
  ``newton_iters``; ``reg``: the 0.01 of 'soft'; ``distance``: see the module docstring.
  """

  def __init__(
    self,
    width: int,
    num_heads: int,
    *,
    kind: str,
    grid: tuple[int, int],
    causal: bool,
    inits,
    dtype,
    rngs: nnx.Rngs,
    stream_width: int | None = None,
    ratio: int = 2,
    conv_size: int = 3,
    newton_iters: int = 20,
    reg: float = 0.01,
    distance: str = "expanded",
  ):
    check_choice("attention", kind, ATTENTIONS[1:])
    check_choice("attention_kwargs.distance", distance, DISTANCES)
    if causal:
      raise ValueError(
        f"model argument attention={kind!r}: SOFT attention is non-causal (its landmarks pool "
        "the 2-D token map); a causal model supports attention='softmax' only"
      )
    if ratio < 1 or grid[0] < ratio or grid[1] < ratio:
      raise ValueError(f"model argument attention_kwargs.ratio={ratio}: must be in [1, {grid}]")
    if conv_size < 0 or (conv_size and conv_size % 2 == 0):
      raise ValueError(f"model argument attention_kwargs.conv_size={conv_size}: odd, or 0 (none)")
    if newton_iters < 1 or reg < 0:
      raise ValueError(
        f"model argument attention_kwargs: newton_iters={newton_iters} must be >= 1 "
        f"and reg={reg} >= 0"
      )
    stream_width = width if stream_width is None else stream_width
    self.width, self.num_heads, self.kind, self.grid = width, num_heads, kind, tuple(grid)
    self.newton_iters, self.reg, self.distance = newton_iters, reg, distance
    head_dim = width // num_heads
    linear = functools.partial(nnx.Linear, dtype=dtype, rngs=rngs)
    self.query = linear(stream_width, width, kernel_init=inits.qkv_kernel)
    self.value = linear(stream_width, width, kernel_init=inits.qkv_kernel)
    self.proj = linear(width, stream_width, kernel_init=inits.attn_out_kernel)
    conv_init = torch_default_conv_init()
    if kind == "gaussian":
      self.landmark_kernel = self.landmark_norm = nnx.data(None)
    else:  # Conv2d(d -> d, r, stride r, no bias) as a (r, r, in, out) kernel
      self.landmark_kernel = nnx.Param(conv_init(rngs.params(), (ratio, ratio, head_dim, head_dim)))
      self.landmark_norm = nnx.LayerNorm(head_dim, epsilon=1e-5, rngs=rngs)
    self.value_conv = (  # Conv2d(h -> h, k, groups h, no bias) as a (k, k, 1, h) kernel
      nnx.Param(conv_init(rngs.params(), (conv_size, conv_size, 1, num_heads)))
      if conv_size
      else nnx.data(None)
    )

  def landmarks(self, q: jax.Array) -> jax.Array:
    """Q~ (B, h, m, d) from the scaled queries q (B, h, N, d).

    The stride-r, kernel-r VALID conv is computed as r x r patches times the kernel (the same
    sum; XLA's CPU convolution is several times slower here)."""
    b, h, _, d = q.shape
    kernel = self.landmark_kernel[...].astype(q.dtype)
    r = kernel.shape[0]
    rows, cols = self.grid[0] // r, self.grid[1] // r
    maps = q.reshape(b, h, *self.grid, d)[:, :, : rows * r, : cols * r]
    patches = maps.reshape(b, h, rows, r, cols, r, d)
    out = jnp.einsum("bhyixjc,ijco->bhyxo", patches, kernel, precision=HIGHEST)
    out = self.landmark_norm(out.reshape(b, h, rows * cols, d))
    return jax.nn.gelu(out, approximate=False)

  def depthwise_value_conv(self, v: jax.Array) -> jax.Array:
    """DWConv(V) for v (B, h, N, d): a k x k filter per head, shared by its d channels,
    zero padding k//2 (torch's cross-correlation), as a sum of k^2 shifted copies (XLA's CPU
    grouped convolution is several times slower)."""
    b, h, _, d = v.shape
    kernel = self.value_conv[...].astype(v.dtype)[:, :, 0, :]  # (k, k, h)
    k, (rows, cols) = kernel.shape[0], self.grid
    pad = k // 2
    maps = jnp.pad(v.reshape(b, h, rows, cols, d), ((0, 0), (0, 0), (pad, pad), (pad, pad), (0, 0)))
    out = sum(
      kernel[i, j][None, :, None, None, None] * maps[:, :, i : i + rows, j : j + cols]
      for i in range(k)
      for j in range(k)
    )
    return out.reshape(v.shape)

  def heads(self, x: jax.Array) -> jax.Array:
    """(B, h, N, d) in float32 at least, from (B, N, width)."""
    b, n, _ = x.shape
    x = x.reshape(b, n, self.num_heads, self.width // self.num_heads).transpose(0, 2, 1, 3)
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))

  def __call__(self, x, value_input=None, *, mask=None, cache=None):
    if mask is not None or cache is not None:
      raise ValueError(f"attention={self.kind!r} takes no padding mask and no key/value cache")
    batch, length, _ = x.shape
    if length != self.grid[0] * self.grid[1]:
      raise ValueError(f"attention={self.kind!r} built for a {self.grid} token map got {length}")
    q = self.heads(self.query(x))
    v = self.heads(self.value(x if value_input is None else value_input))
    q = q / jnp.sqrt(jnp.sqrt(jnp.asarray(q.shape[-1], q.dtype)))
    landmarks = None if self.kind == "gaussian" else self.landmarks(q)
    out = kernel_attention(
      q,
      landmarks,
      v,
      kind=self.kind,
      iters=self.newton_iters,
      reg=self.reg,
      distance=self.distance,
    )
    if self.value_conv is not None:
      out = out + self.depthwise_value_conv(v)
    out = out.transpose(0, 2, 1, 3).reshape(batch, length, self.width).astype(x.dtype)
    return self.proj(out)


def attention_factory(kind: str, kwargs: dict | None, grid: tuple[int, int]):
  """The ``Transformer(attention=...)`` factory for ``model.attention`` = ``kind``, or None
  for 'softmax'; unknown ``model.attention_kwargs`` keys fail with a one-line message."""
  check_choice("attention", kind, ATTENTIONS)
  kwargs = dict(kwargs or {})
  unknown = sorted(set(kwargs) - set(OPTIONS))
  if kind == "softmax" and kwargs:
    unknown = sorted(kwargs)
  if unknown:
    known = ", ".join(OPTIONS) if kind != "softmax" else "none for attention='softmax'"
    raise ValueError(f"model argument attention_kwargs: unknown {', '.join(unknown)}; {known}")
  if kind == "softmax":
    return None
  return functools.partial(SoftmaxFreeAttention, kind=kind, grid=grid, **kwargs)
