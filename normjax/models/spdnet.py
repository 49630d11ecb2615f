r"""SPDNet with Riemannian batch normalization under AIRM, Bures-Wasserstein or generalised BW.

Huang & Van Gool, "A Riemannian Network for SPD Matrix Learning" (AAAI 2017) for the layers;
Brooks et al., "Riemannian batch normalization for SPD neural networks" (NeurIPS 2019) for the
AIRM batch norm; "Learning to Normalize on the SPD Manifold under Bures-Wasserstein Geometry"
(CVPR 2025, arXiv 2504.00660; official code jjscc/GBWBN ``GBWBN_SPDNet/spd/{nn,functional,
optimizers}.py``, read at 1ec3232) for the BW / GBW batch norm. Geometry: ``spd_geometry.py``.

Layers (input X (N, n, n) SPD):

* ``BiMap``: X -> W^T X W with W (n_in, n_out) on the Stiefel manifold (W^T W = I), parameter
  ``stiefel_kernel`` (init: the first n_out columns of the QR factor of a Gaussian matrix; the
  official draws U of svd(v v^T), v uniform). Updated by ``normjax.optim.stiefel_rsgd``.
* ``ReEig``: eigenvalues clamped at ``reeig_threshold`` (official 1e-5).
* ``LogEig``: matrix logarithm, flattened to n^2 features.
* ``SPDBatchNorm`` (``spd_norm``):
  - ``'bw'`` / ``'gbw'`` (the official ``BatchNormSPD(n, po=theta)``): X <- X^theta; for GBW
    X <- M^-1/2 X M^-1/2 with a learnable SPD ``spd_metric`` M (init I; 'bw' is M = I fixed);
    bias B (``spd_bias``, SPD, init I + diag(1..n) 1e-7) mapped the same way,
    B~ = M^-1/2 B^theta M^-1/2. Training statistics, WITHOUT gradient (official ``no_grad``):
    G = one BW barycentre iteration from the arithmetic mean, v = mean_i d^2_BW(X_i, I) /
    theta^2 (dispersion about the identity, not about G). Centring C_i = Exp_I(J_G^-1/2
    Log_G(X_i)), scaling C_i <- Exp_I(s / sqrt(v + eps) Log_I(C_i)) (``shift`` s, init 1,
    eps 1e-5), biasing Y_i = Exp_B~(J_B~^1/2 Log_I(C_i)), undo Y <- M^1/2 Y M^1/2,
    Y <- Y^(1/theta). Running statistics (``nnx.BatchStat``, checkpointed; the official mean is
    a plain attribute, lost on save): rm <- gamma_BW(rm, G; 1 - momentum), rv <- momentum rv +
    (1 - momentum) v, momentum 0.9 (official 0.1 on the new value); eval uses them.
  - ``'airm'`` (Brooks et al.): G = one Karcher-flow step from the arithmetic mean (no
    gradient), Y_i = B^1/2 G^-1/2 X_i G^-1/2 B^1/2, rm by the AIRM geodesic; no variance
    scaling, theta and M unused (Brooks' layer).
  - ``'none'``: no normalization.

Official defects not reproduced, each with an option that does:

* ``official_power_grad`` (default False): the official ``PowerEig`` keeps its exponent in a
  class attribute set at forward time; the three power maps of a forward (theta, theta, then
  1/theta) therefore all use 1/theta in their backward's f' term, so for theta != 1 the
  gradients through X^theta and B^theta are wrong. True: the same 1/theta here.
* ``freeze_bimap`` (default False): the official ``MixOptimizer.step`` has its Stiefel update
  commented out, so the BiMap weight never leaves its random init. True: the BiMap output
  treats W as a constant (zero gradient; the Stiefel retraction of W is W).

``dtype='float64'`` runs parameters and matrices in float64 (needs ``JAX_ENABLE_X64=1``), as the
official code does; the default is float32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from normjax.models import check_choice, register
from normjax.models import spd_geometry as geo
from normjax.norms.base import RunningAverageView
from normjax.norms.matrix_functions import clampm, inv_sqrtm, logm, powm, sqrtm

SPD_NORMS = ("none", "airm", "bw", "gbw")
DTYPES = {"float32": jnp.float32, "float64": jnp.float64}
BIAS_INIT_STEP = 1e-7  # official: I + diag(1, ..., n) * 1e-7


def spd_dtype(dtype: str):
  check_choice("dtype", dtype, DTYPES)
  if dtype == "float64" and jnp.zeros((), jnp.float64).dtype != jnp.float64:
    raise ValueError(
      "model argument dtype='float64': needs 64-bit JAX (set JAX_ENABLE_X64=1); or 'float32'"
    )
  return DTYPES[dtype]


def stiefel_init(key, n_in: int, n_out: int, dtype):
  q, r = jnp.linalg.qr(jax.random.normal(key, (n_in, n_in), dtype))
  return (q * jnp.sign(jnp.diagonal(r)))[:, :n_out]


class BiMap(nnx.Module):
  """X -> W^T X W, W (n_in, n_out) with orthonormal columns (``stiefel_kernel``)."""

  def __init__(self, n_in: int, n_out: int, *, frozen: bool = False, dtype, rngs: nnx.Rngs):
    if n_out > n_in:
      raise ValueError(f"model argument hidden={n_out}: BiMap needs n_out <= n_in={n_in}")
    self.stiefel_kernel = nnx.Param(stiefel_init(rngs.params(), n_in, n_out, dtype))
    self.frozen = frozen

  def __call__(self, x):
    w = self.stiefel_kernel[...]
    w = jax.lax.stop_gradient(w) if self.frozen else w
    return jnp.swapaxes(w, -1, -2) @ x @ w


def reeig(x, threshold: float):
  """Eigenvalues clamped at ``threshold``."""
  return clampm(x, threshold)


def log_eig(x):
  """logm(X) flattened to n^2 features."""
  return logm(x).reshape(*x.shape[:-2], -1)


def _power(x, theta: float, deriv: float | None):
  return x if theta == 1.0 else powm(x, theta, deriv_p=deriv)


class SPDBatchNorm(RunningAverageView, nnx.Module):
  """Riemannian batch normalization of (N, n, n) SPD matrices (see the module docstring)."""

  uses_batch_statistics = True

  def __init__(
    self,
    n: int,
    *,
    metric: str = "gbw",
    theta: float = 1.0,
    momentum: float = 0.9,
    epsilon: float = 1e-5,
    official_power_grad: bool = False,
    use_running_average: bool = False,
    dtype=jnp.float32,
  ):
    check_choice("spd_norm", metric, SPD_NORMS[1:])
    if not theta > 0:
      raise ValueError(f"model argument theta={theta!r}: must be > 0 (the power deformation)")
    if not 0 <= momentum < 1:
      raise ValueError(f"model argument bn_momentum={momentum!r}: must be in [0, 1)")
    self.metric, self.theta, self.momentum, self.epsilon = metric, float(theta), momentum, epsilon
    self.official_power_grad = official_power_grad
    self.use_running_average = use_running_average
    eye = jnp.eye(n, dtype=dtype)
    self.spd_bias = nnx.Param(eye + jnp.diag(jnp.arange(1, n + 1, dtype=dtype)) * BIAS_INIT_STEP)
    self.spd_metric = nnx.Param(eye) if metric == "gbw" else nnx.data(None)
    self.shift = nnx.Param(jnp.ones((), dtype))
    self.running_mean = nnx.BatchStat(eye)
    self.running_var = nnx.BatchStat(jnp.ones((), dtype))

  def _airm(self, x, train):
    if train:
      g = jax.lax.stop_gradient(geo.airm_karcher_step(x))
      self.running_mean[...] = geo.airm_geodesic(self.running_mean[...], g, 1 - self.momentum)
    else:
      g = self.running_mean[...]
    gis, bs = inv_sqrtm(g), sqrtm(self.spd_bias[...])
    return geo.congruence(geo.congruence(x, gis), bs)

  def __call__(self, x):
    train = not self.use_running_average
    if self.metric == "airm":
      return self._airm(x, train)
    theta = self.theta
    deriv = 1.0 / theta if self.official_power_grad else None
    x = _power(x, theta, deriv)
    b = _power(self.spd_bias[...], theta, deriv)
    if self.spd_metric is not None:
      m = self.spd_metric[...]
      mis, ms = inv_sqrtm(m), sqrtm(m)
      x, b = geo.congruence(x, mis), geo.congruence(b, mis)
    if train:
      g = jax.lax.stop_gradient(geo.bw_barycentre_step(x))
      v = jax.lax.stop_gradient(geo.bw_dispersion_identity(x, theta))
      t = 1 - self.momentum
      self.running_mean[...] = geo.bw_geodesic(self.running_mean[...], g, t)
      self.running_var[...] = self.momentum * self.running_var[...] + t * v
    else:
      g, v = self.running_mean[...], self.running_var[...]
    c = geo.bw_exp_identity(geo.to_identity_tangent(g, geo.bw_log(g, x)))
    c = geo.bw_exp_identity(self.shift[...] / jnp.sqrt(v + self.epsilon) * geo.bw_log_identity(c))
    y = geo.bw_exp(b, geo.from_identity_tangent(b, geo.bw_log_identity(c)))
    if self.spd_metric is not None:
      y = geo.congruence(y, ms)
    return _power(y, 1.0 / theta, None)


@register("spdnet")
class SPDNet(nnx.Module):
  """BiMap -> [SPD batch norm] -> ReEig -> LogEig -> Linear (see the module docstring).

  Args:
    num_classes, image_size: classes and the input matrix size n (from the data).
    hidden: BiMap output size (default n).
    spd_norm: 'none' | 'airm' | 'bw' | 'gbw'. theta: power deformation (bw/gbw).
    bn_momentum: flax momentum of the running statistics (0.9 = the official 0.1).
    official_power_grad / freeze_bimap: reproduce the official defects (module docstring).
    reeig_threshold: ReEig's eigenvalue floor. dtype: 'float32' | 'float64'.
  """

  def __init__(
    self,
    *,
    num_classes: int,
    image_size: int,
    hidden: int | None = None,
    spd_norm: str = "gbw",
    theta: float = 1.0,
    bn_momentum: float = 0.9,
    official_power_grad: bool = False,
    freeze_bimap: bool = False,
    reeig_threshold: float = 1e-5,
    dtype: str = "float32",
    rngs: nnx.Rngs,
  ):
    check_choice("spd_norm", spd_norm, SPD_NORMS)
    if not reeig_threshold > 0:
      raise ValueError(f"model argument reeig_threshold={reeig_threshold!r}: must be > 0")
    self.dtype = spd_dtype(dtype)
    hidden = image_size if hidden is None else hidden
    self.bimap = BiMap(image_size, hidden, frozen=freeze_bimap, dtype=self.dtype, rngs=rngs)
    self.norm = (
      SPDBatchNorm(
        hidden,
        metric=spd_norm,
        theta=theta,
        momentum=bn_momentum,
        official_power_grad=official_power_grad,
        dtype=self.dtype,
      )
      if spd_norm != "none"
      else nnx.data(None)
    )
    self.reeig_threshold = reeig_threshold
    self.head = nnx.Linear(
      hidden * hidden, num_classes, dtype=self.dtype, param_dtype=self.dtype, rngs=rngs
    )

  def __call__(self, x):
    geo.check_spd(x, "spdnet input")
    h = self.bimap(x.astype(self.dtype))
    if self.norm is not None:
      h = self.norm(h)
    h = reeig(h, self.reeig_threshold)
    return self.head(log_eig(h)).astype(jnp.float32)


__all__ = ["SPD_NORMS", "BiMap", "reeig", "log_eig", "SPDBatchNorm", "SPDNet"]
