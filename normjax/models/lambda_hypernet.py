r"""A hypernetwork over a loss weight: one digits MLP per lambda in [0, 1] (a Pareto-front
hypernetwork), the experiment of reference/next-methods.md §3 for MIP (arXiv 2304.07645).

Primary network ``DigitsMLP`` (64 -> 32 -> 10 with a 32 -> 64 linear decoder, 4522
parameters on 8x8 digits): h = LeakyReLU_0.01(W_1 x + b_1), logits = W_2 h + b_2,
reconstruction = W_3 h + b_3. Its initializers are hyperlight's rule for theta_0: every kernel
Kaiming normal, fan-in, gain sqrt(2) (N(0, 2 / fan_in), untruncated), every bias 0.

``LambdaHyperNet`` (model.name='lambda_hypernet') predicts the primary's parameters from lambda
with ``normjax.models.hypernet.HyperNet`` and runs the primary on the images:

* training: one lambda ~ U(0, 1) per batch (per micro-batch under gradient accumulation),
  drawn from the model's own RNG stream ``lambda_rng``: the i-th draw uses the key
  fold_in(k, i), k from the run seed, and the stream's counter is model state, saved in every
  checkpoint, so step t always sees the same lambda and a resumed run continues exactly;
* eval: every lambda of the grid linspace(0, 1, eval_grid) at once (``jax.vmap`` over the
  grid's parameter trees).

``model(images) -> {'logits': (G, B, classes), 'reconstruction': (G, B, H*W*C), 'lam': (G,)}``
with G = 1 in training; ``forward(images, lams)`` for any lambdas; the task
'classify_and_reconstruct' (``normjax.tasks.classify_and_reconstruct``) weighs the losses.
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from normjax.models import check_choice, compute_dtype, register
from normjax.models.hypernet import LEAKY_SLOPE, HyperNet

THETA0_KERNEL_INIT = jax.nn.initializers.variance_scaling(2.0, "fan_in", "normal")


class DigitsMLP(nnx.Module):
  """x (B, D) -> (logits (B, classes), reconstruction (B, D)) through one hidden layer."""

  def __init__(self, in_features: int, hidden: int, num_classes: int, *, dtype, rngs: nnx.Rngs):
    dense = lambda n_in, n_out: nnx.Linear(
      n_in,
      n_out,
      kernel_init=THETA0_KERNEL_INIT,
      bias_init=jax.nn.initializers.zeros,
      dtype=dtype,
      param_dtype=dtype,
      rngs=rngs,
    )
    self.hidden = dense(in_features, hidden)
    self.head = dense(hidden, num_classes)
    self.decoder = dense(hidden, in_features)

  def __call__(self, x):
    h = jax.nn.leaky_relu(self.hidden(x), LEAKY_SLOPE)
    return self.head(h), self.decoder(h)


@register("lambda_hypernet")
class LambdaHyperNet(nnx.Module):
  """The lambda-conditioned hypernetwork for ``DigitsMLP`` (see the module docstring).

  Args:
    num_classes, image_size, in_channels: from the data.
    primary_hidden: the primary MLP's hidden width (32).
    hidden_sizes: the hypernetwork's hidden widths (hyperlight's README example: 16, 64, 128).
    encoding, init_independent_weights, output_split_init: ``HyperNet``'s parametrization;
      MIP = ('cos|sin', True, True), the plain default = ('none', False, False).
    eval_grid: evaluation lambdas, linspace(0, 1, eval_grid) (5: 0, 0.25, ..., 1; 1: 0).
    dtype: 'float32' or 'float64' (parameters and compute).
  """

  task = "classify_and_reconstruct"

  def __init__(
    self,
    *,
    num_classes: int,
    image_size: int,
    in_channels: int,
    primary_hidden: int = 32,
    hidden_sizes: Sequence[int] = (16, 64, 128),
    encoding: str = "cos|sin",
    init_independent_weights: bool = True,
    output_split_init: bool = True,
    eval_grid: int = 5,
    dtype: str = "float32",
    rngs: nnx.Rngs,
  ):
    self.dtype = compute_dtype(check_choice("dtype", dtype, ("float32", "float64")))
    for name, value in (("primary_hidden", primary_hidden), ("eval_grid", eval_grid)):
      if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"model argument {name}={value!r}: must be an integer >= 1")
    self.in_features = image_size * image_size * in_channels
    self.eval_lambdas = tuple(float(x) for x in np.linspace(0.0, 1.0, eval_grid))
    primary = DigitsMLP(self.in_features, primary_hidden, num_classes, dtype=self.dtype, rngs=rngs)
    self.hypernet = HyperNet(
      primary,
      input_size=1,
      hidden_sizes=hidden_sizes,
      encoding=encoding,
      init_independent_weights=init_independent_weights,
      output_split_init=output_split_init,
      rngs=rngs,
    )
    self.lambda_rng = rngs["lambda"].fork()
    self.deterministic = False  # model.eval() sets it: evaluate the lambda grid

  def thetas(self, lams: jax.Array) -> nnx.State:
    """The primary's parameter trees for lambdas (G,): leaves with a leading G axis."""
    return self.hypernet(jnp.asarray(lams, self.dtype)[:, None])

  def forward(self, images: jax.Array, lams: jax.Array) -> dict:
    """The primary's outputs on ``images`` for each of ``lams`` (G,)."""
    x = images.reshape(images.shape[0], math.prod(images.shape[1:])).astype(self.dtype)
    if x.shape[-1] != self.in_features:
      raise ValueError(
        f"lambda_hypernet input: {x.shape[-1]} features per example, built for "
        f"{self.in_features} (image_size x image_size x in_channels)"
      )
    lams = jnp.asarray(lams, self.dtype)
    logits, reconstruction = jax.vmap(self.hypernet.primary_fn(), in_axes=(0, None))(
      self.thetas(lams), x
    )
    return {"logits": logits, "reconstruction": reconstruction, "lam": lams}

  def __call__(self, images: jax.Array) -> dict:
    if self.deterministic:
      lams = jnp.asarray(self.eval_lambdas, self.dtype)
    else:
      lams = jax.random.uniform(self.lambda_rng(), (1,), self.dtype)
    return self.forward(images, lams)
