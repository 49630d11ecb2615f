r"""Group-wise whitening and colouring: exact ZCA per group of channels, or GDWCT's form.

Cho, Choi, Park, Shin, Choo, "Image-to-Image Translation via Group-wise Deep Whitening-and-
Coloring Transformation", CVPR 2019 (arXiv 1812.09912); official code WonwoongCho/GDWCT
(``model.py``: ``WCT``, ``Get.coloring``; ``run.py``: ``reg``; ``configs/config.yaml``; read at
2c58934). Exact group ZCA as a normalization layer is Decorrelated BN's (Huang et al., CVPR 2018)
with groups.

x channels-last (..., C), C = G groups of n = C / G consecutive channels; statistics over every
axis but the last (all examples and positions of the batch, as the official code pools B, H, W),
m = the number of such rows, x_g the (m, n) rows of group g, mu the batch mean (C,):

* ``mode='zca'`` (exact): Sigma_g = (x_g - mu_g)^T (x_g - mu_g) / m + eps I (population
  covariance, as normjax's batchnorm variance), W_g = Sigma_g^(-1/2) by eigendecomposition
  (``normjax.norms.matrix_functions``: safe Daleckii-Krein backward, gradients flow through the
  statistics as in BatchNorm), y_g = (x_g - mu_g) W_g. With n = 1 this is BatchNorm.
* ``mode='gdwct'`` (GDWCT's "deep whitening"): the forward only centres, y = x - mu; whitening
  is asked of the layers BEFORE it by the penalty lambda_w * mean_{g,i,j} |Sigma_g - I|_{ij}
  with the official estimate Sigma_g = (x_g - mu_g)^T (x_g - mu_g) / (m - 1) + 1e-5 I
  (``whitening_weight`` = lambda_w, official ``LAMBDA_W_REG`` 0.001), recorded as an
  ``AuxLoss`` in training.

Colouring (``coloring``):

* ``'affine'``: per-channel ``scale`` and ``bias`` (BatchNorm's affine).
* ``'gdwct'``: the learnable block colouring of ``Get.coloring``: per group a matrix S_g (init
  I), D_g = the L2 norms of its columns, U_g = S_g / D_g (unit columns),
  X_g = S_g U_g^T (= U_g diag(D_g) U_g^T), y_g <- y_g X_g^T + bias; the colouring penalty
  lambda_c * mean |U_g - I| (L1 to the identity, as the official code -- not an
  orthogonality penalty on U^T U; ``coloring_weight`` = lambda_c, official 10) as an AuxLoss.
  In GDWCT S_g and the bias come per image from an MLP of the style code; as a normalization
  layer they are parameters.
* ``mix_alpha`` (None = off): the official output alpha (coloured) + (1 - alpha) x with a
  learnable alpha, init 1 - 0.4 = 0.6 in the official ``WCT``.

Running statistics (``nnx.BatchStat``): mean (C,) and covariance (G, n, n), without eps,
r <- momentum r + (1 - momentum) batch (flax convention; 0.9 = PyTorch's 0.1, DBN's default).
Eval: whitening (zca) or centring (gdwct) with them. Decorrelated BN averages the whitening
matrix instead; averaging the covariance keeps the state independent of eps and mode.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from normjax.norms import register
from normjax.norms.base import (
  TORCH_MOMENTUM,
  AffineNorm,
  StatefulNorm,
  check_fraction,
  check_positive,
  stats_dtype,
)
from normjax.norms.matrix_functions import inv_sqrtm
from normjax.variables import AuxLoss

MODES = ("zca", "gdwct")
COLORINGS = ("affine", "gdwct")
GDWCT_EPS = 1e-5  # the official covariance ridge


def group_rows(x, num_groups: int):
  """(m, G, n) rows of a channels-last x, in the statistics dtype."""
  c = x.shape[-1]
  return x.astype(stats_dtype(x)).reshape(-1, num_groups, c // num_groups)


def group_covariance(centred, *, keep=None, unbiased: bool = False):
  """Sigma_g = centred_g^T centred_g / m (or m - 1): (G, n, n) from (m, G, n) rows."""
  if keep is not None:
    centred = jnp.where(keep[:, None, None], centred, 0)
    m = jnp.maximum(jnp.sum(keep, dtype=centred.dtype), 1)
  else:
    m = jnp.asarray(centred.shape[0], centred.dtype)
  return jnp.einsum("mgi,mgj->gij", centred, centred) / (m - 1 if unbiased else m)


def coloring_matrix(s):
  """GDWCT's X_g = S_g U_g^T with U_g = S_g / (column norms of S_g); returns (X, U)."""
  d = jnp.sqrt(jnp.sum(jnp.square(s), axis=-2, keepdims=True))
  u = s / d
  return s @ jnp.swapaxes(u, -1, -2), u


def group_whitening(
  x,
  params,
  state,
  *,
  train,
  mask=None,
  num_groups: int,
  mode: str = "zca",
  coloring: str = "affine",
  momentum: float = 0.9,
  epsilon: float = 1e-5,
):
  """Group whitening (see the module docstring).

  Args:
    x: ``(..., C)``. params: ``scale``/``bias`` (C,), ``coloring`` (G, n, n) for
      ``coloring='gdwct'``, ``alpha`` () when mixing.
    state: ``{'mean': (C,), 'cov': (G, n, n)}``.

  Returns:
    ``(y, new_state)``; ``new_state`` also holds the unweighted penalties
    ``whitening_penalty`` (gdwct mode, training) and ``coloring_penalty`` (gdwct colouring).
  """
  c = x.shape[-1]
  n = c // num_groups
  rows = group_rows(x, num_groups)
  keep = None
  if mask is not None:
    keep = jnp.broadcast_to(jnp.asarray(mask, bool), x.shape[:-1]).reshape(-1)
  extra = {}
  if train:
    if keep is None:
      mean = jnp.mean(rows, 0)
    else:
      count = jnp.maximum(jnp.sum(keep, dtype=rows.dtype), 1)
      mean = jnp.sum(jnp.where(keep[:, None, None], rows, 0), 0) / count
    centred = rows - mean
    cov = group_covariance(centred, keep=keep)
    update = lambda old, new: jax.lax.stop_gradient(
      momentum * old + (1 - momentum) * new.astype(old.dtype)
    )
    new_state = {"mean": update(state["mean"], mean.reshape(c)), "cov": update(state["cov"], cov)}
    if mode == "gdwct":
      official = group_covariance(centred, keep=keep, unbiased=True)
      official = official + GDWCT_EPS * jnp.eye(n, dtype=official.dtype)
      extra["whitening_penalty"] = jnp.mean(jnp.abs(official - jnp.eye(n, dtype=official.dtype)))
  else:
    mean = state["mean"].astype(rows.dtype).reshape(num_groups, n)
    cov = state["cov"].astype(rows.dtype)
    centred = rows - mean
    new_state = dict(state)
  if mode == "zca":
    w = inv_sqrtm(cov + epsilon * jnp.eye(n, dtype=cov.dtype))
    y = jnp.einsum("mgj,gij->mgi", centred, w)
  else:
    y = centred
  if coloring == "gdwct":
    xg, u = coloring_matrix(params["coloring"].astype(y.dtype))
    y = jnp.einsum("mgj,gij->mgi", y, xg)
    extra["coloring_penalty"] = jnp.mean(jnp.abs(u - jnp.eye(n, dtype=u.dtype)))
    y = y.reshape(x.shape)
    if params.get("bias") is not None:
      y = y + params["bias"]
  else:
    y = y.reshape(x.shape)
    if params.get("scale") is not None:
      y = y * params["scale"]
    if params.get("bias") is not None:
      y = y + params["bias"]
  if params.get("alpha") is not None:
    y = params["alpha"] * y + (1 - params["alpha"]) * x.astype(y.dtype)
  return y.astype(x.dtype), {**new_state, **extra} if train else new_state


@register("group_whitening")
class GroupWhitening(StatefulNorm, AffineNorm):
  """Group whitening module (see the module docstring).

  Args:
    num_groups / group_size: G groups (default 8, the official ``N_GROUP``) or n channels each.
    mode: 'zca' (exact whitening) or 'gdwct' (centring + whitening penalty).
    coloring: 'affine' (per-channel scale and bias) or 'gdwct' (learnable block colouring).
    whitening_weight / coloring_weight: lambda_w (official 0.001) and lambda_c (official 10)
      of the penalties, recorded as AuxLoss in training (0 = not recorded).
    mix_alpha: None, or the initial alpha of the official output mix (official 0.6).
    momentum: flax momentum of the running mean and covariance (0.9 = PyTorch 0.1).
  """

  uses_batch_statistics = True
  state_variables = ("mean", "cov")
  function = staticmethod(group_whitening)

  def __init__(
    self,
    num_features: int,
    *,
    num_groups: int = 8,
    group_size: int | None = None,
    mode: str = "zca",
    coloring: str = "affine",
    whitening_weight: float = 0.001,
    coloring_weight: float = 10.0,
    mix_alpha: float | None = None,
    momentum: float = 0.9,
    epsilon: float = 1e-5,
    use_running_average: bool = False,
    rngs: nnx.Rngs | None = None,
  ):
    del rngs
    check_positive("epsilon", epsilon)
    check_fraction("momentum", momentum, "group_whitening", TORCH_MOMENTUM)
    if mode not in MODES:
      raise ValueError(f"norm argument mode={mode!r}: one of {', '.join(MODES)}")
    if coloring not in COLORINGS:
      raise ValueError(f"norm argument coloring={coloring!r}: one of {', '.join(COLORINGS)}")
    for name, value in (
      ("whitening_weight", whitening_weight),
      ("coloring_weight", coloring_weight),
    ):
      if not value >= 0:
        raise ValueError(f"norm argument {name}={value!r}: must be >= 0")
    if group_size is not None:
      if not isinstance(group_size, int) or group_size < 1 or num_features % group_size:
        raise ValueError(
          f"norm argument group_size={group_size!r}: must be a positive divisor of "
          f"num_features={num_features}"
        )
      num_groups = num_features // group_size
    if not isinstance(num_groups, int) or num_groups < 1 or num_features % num_groups:
      divisors = [d for d in range(1, num_features + 1) if num_features % d == 0]
      raise ValueError(
        f"norm argument num_groups={num_groups!r}: must divide num_features={num_features}; "
        f"valid: {divisors}"
      )
    super().__init__(num_features, use_scale=coloring == "affine", use_bias=True)
    n = num_features // num_groups
    self.num_groups, self.mode, self.coloring_kind = num_groups, mode, coloring
    self.momentum, self.epsilon = momentum, epsilon
    self.whitening_weight, self.coloring_weight = whitening_weight, coloring_weight
    self.use_running_average = use_running_average
    eye = jnp.broadcast_to(jnp.eye(n, dtype=jnp.float32), (num_groups, n, n))
    self.coloring = nnx.Param(eye) if coloring == "gdwct" else nnx.data(None)
    self.alpha = (
      nnx.Param(jnp.asarray(mix_alpha, jnp.float32)) if mix_alpha is not None else nnx.data(None)
    )
    self.mean = nnx.BatchStat(jnp.zeros((num_features,), jnp.float32))
    self.cov = nnx.BatchStat(eye)
    self._penalties = {
      "whitening_penalty": whitening_weight if mode == "gdwct" else 0.0,
      "coloring_penalty": coloring_weight if coloring == "gdwct" else 0.0,
    }
    self.records_aux_loss = any(w > 0 for w in self._penalties.values())

  def params(self):
    out = super().params()
    if self.coloring is not None:
      out["coloring"] = self.coloring[...]
    if self.alpha is not None:
      out["alpha"] = self.alpha[...]
    return out

  def function_kwargs(self) -> dict:
    return {
      "num_groups": self.num_groups,
      "mode": self.mode,
      "coloring": self.coloring_kind,
      "momentum": self.momentum,
      "epsilon": self.epsilon,
    }

  def __call__(self, x, mask=None):
    y, new_state = self.run_with_state(x, mask)
    if self.records_aux_loss and not self.use_running_average:
      self.aux_loss = AuxLoss(
        sum(w * new_state[k] for k, w in self._penalties.items() if w > 0 and k in new_state)
      )
    return y


__all__ = [
  "MODES",
  "COLORINGS",
  "group_rows",
  "group_covariance",
  "coloring_matrix",
  "group_whitening",
  "GroupWhitening",
]
