r"""Hypernetworks with Magnitude Invariant Parametrizations (MIP; Ortiz, Guttag, Dalca, ICLR 2024,
arXiv 2304.07645), as the authors' library JJGO/hyperlight (a3e2108) codes them.

A hypernetwork H maps a conditioning vector gamma in R^d to the parameters theta of a primary
network f, which then runs as ``f(theta(gamma), x)``. With a plain MLP hypernetwork the size
of the predicted weights follows the size of gamma (a bias-free ReLU MLP has H(a gamma) =
a H(gamma) exactly), which the paper shows destabilizes training. MIP changes two things:

* input encoding ``'cos|sin'`` (``hyperlight/hypernet/encoding.py``): gamma in [0, 1]^d is
  fed as e(gamma) = [cos(pi gamma / 2), sin(pi gamma / 2)] in R^{2d} (all cosines, then all
  sines), so ||e(gamma)||^2 = d for every gamma. ``'z|1-z'`` ([gamma, 1 - gamma]) and
  ``'none'`` (gamma as is) are hyperlight's other modes;
* output encoding (``hyperlight/hypernet/model.py``, ``HyperNet``): theta(gamma) = theta_0 +
  W_out h(e(gamma)), with independent weights theta_0 initialised like an ordinary primary
  network. hyperlight stores theta_0 as the bias of its output Linear; here theta_0 IS the
  primary module's own ``nnx.Param`` tree (``HyperNet.primary``), initialised by the primary
  module's own initializers (hyperlight instead re-draws every parameter whose name ends in
  ``.weight`` Kaiming-normal fan-in with gain sqrt(2) and zeroes every ``.bias``).

The hypernetwork backbone (hyperlight ``FullyConnectedNet``): for each hidden size a Linear and
LeakyReLU (slope 0.01), then an output Linear to |theta| units. Initialisation as hyperlight's:

* hidden Linears: weight ~ N(0, 2 / fan_out) (Kaiming normal, fan-out, gain sqrt(2)), bias 0;
* output weight: N(0, 1 / |theta|) (Kaiming normal, fan-out over the whole output, linear
  gain); with ``output_split_init`` (MIP) each block of columns that predicts one primary
  parameter p is re-drawn N(0, 2 / |theta_p|), so a large tensor does not get a tiny init
  (``HyperNet._init_output_split``). At a3e2108 every block is drawn so, biases included; the
  PyPI release 0.0.5 zeroed the blocks of ``.bias`` parameters (removed by commit 410a8a1);
* theta_0: the primary's initializers with ``init_independent_weights`` (MIP), else zeros
  (hyperlight's output bias with ``init_independent_weights=False``).

The plain default of the comparison is hyperlight's ``HyperNet(encoding=None,
init_independent_weights=False, output_split_init=False)``: theta(gamma) = b + W_out
h(gamma), b learnable and 0 at init. Torch lays a Linear weight out (out, in); Flax kernels are
(in, out), so hyperlight's row block [offset, offset + |theta_p|) is the column block here. The
flat output is split over the primary's parameters in ``jax.tree`` order of its ``nnx.Param``
state (hyperlight: the order of its ``output_shapes`` dict); the order changes nothing but
which columns of W_out predict which parameter.

Batched conditioning: ``gamma`` of shape (..., d) gives a theta tree whose leaves have the
leading dims ``...``; ``apply_primary`` runs the primary on one theta, and ``jax.vmap`` of it
runs one theta per example (hyperlight predicts one theta per gamma row).
"""

from __future__ import annotations

import math
import warnings
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from normjax.models import check_choice

ENCODINGS = {"cos|sin": 2, "z|1-z": 2, "none": 1}  # name -> output size per input dimension
LEAKY_SLOPE = 0.01  # torch.nn.LeakyReLU's default, hyperlight's hypernetwork activation


def encode_input(z: jax.Array, mode: str = "cos|sin") -> jax.Array:
  """hyperlight's ``encode_input``: 'cos|sin' -> [cos(pi z/2), sin(pi z/2)], 'z|1-z' ->
  [z, 1 - z], 'none' -> z, concatenated on the last axis.

  ||cos|sin(z)||^2 = d for any real z; the map is one-to-one only for z in [0, 1], and a
  concrete input outside [0, 1] warns, as hyperlight does.
  """
  check_choice("encoding", mode, ENCODINGS)
  if mode == "none":
    return z
  if mode == "cos|sin":
    if not isinstance(z, jax.core.Tracer) and (
      np.any(np.asarray(z) < 0) or np.any(np.asarray(z) > 1)
    ):
      warnings.warn("hypernetwork input outside [0, 1]: the cos|sin encoding is not one-to-one")
    angle = jnp.pi * z / 2
    return jnp.concatenate([jnp.cos(angle), jnp.sin(angle)], axis=-1)
  return jnp.concatenate([z, 1 - z], axis=-1)


def _normal(key, shape, std, dtype):
  return std * jax.random.normal(key, shape, dtype)


class HyperNet(nnx.Module):
  """theta(gamma) = theta_0 + unflatten(W_out h(e(gamma))) for the primary module ``primary``.

  Args:
    primary: the primary network, an NNX module whose state is only ``nnx.Param`` leaves; it
      becomes ``self.primary`` and its parameters are theta_0.
    input_size: d, the size of gamma.
    hidden_sizes: widths of the hypernetwork's hidden layers (empty: one Linear).
    encoding: 'cos|sin' (MIP), 'z|1-z' or 'none'.
    init_independent_weights: theta_0 keeps the primary's initialisation (MIP); else zeros.
    output_split_init: per-parameter output-block initialisation (MIP); else one draw with
      the whole |theta| as fan-out.
    rngs: the parameters' random streams.
  """

  def __init__(
    self,
    primary: nnx.Module,
    *,
    input_size: int,
    hidden_sizes: Sequence[int],
    encoding: str = "cos|sin",
    init_independent_weights: bool = True,
    output_split_init: bool = True,
    rngs: nnx.Rngs,
  ):
    self.encoding = check_choice("encoding", encoding, ENCODINGS)
    for name, flag in (
      ("init_independent_weights", init_independent_weights),
      ("output_split_init", output_split_init),
    ):
      if not isinstance(flag, bool):
        raise ValueError(f"model argument {name}={flag!r}: must be True or False")
    if isinstance(input_size, bool) or not isinstance(input_size, int) or input_size < 1:
      raise ValueError(f"model argument input_size={input_size!r}: must be an integer >= 1")
    hidden_sizes = tuple(hidden_sizes)
    if any(isinstance(h, bool) or not isinstance(h, int) or h < 1 for h in hidden_sizes):
      raise ValueError(
        f"model argument hidden_sizes={hidden_sizes!r}: widths must be integers >= 1"
      )
    _, params, rest = nnx.split(primary, nnx.Param, ...)
    if jax.tree.leaves(rest):
      raise ValueError(
        "HyperNet primary: its state must be nnx.Param leaves only (a hypernetwork predicts "
        "every parameter; running statistics or RNG state have no prediction)"
      )
    leaves = jax.tree.leaves(params)
    dtype = leaves[0].dtype
    self.sizes = tuple(int(math.prod(x.shape)) for x in leaves)
    self.input_size, self.hidden_sizes = input_size, hidden_sizes
    if not init_independent_weights:
      nnx.update(primary, jax.tree.map(jnp.zeros_like, params))
    self.primary = primary

    widths = (input_size * ENCODINGS[encoding], *hidden_sizes)
    self.hidden = nnx.List(
      [
        nnx.Linear(
          n_in,
          n_out,
          kernel_init=jax.nn.initializers.variance_scaling(2.0, "fan_out", "normal"),
          bias_init=jax.nn.initializers.zeros,
          param_dtype=dtype,
          rngs=rngs,
        )
        for n_in, n_out in zip(widths[:-1], widths[1:])
      ]
    )
    total, last = sum(self.sizes), widths[-1]
    key = rngs.params()
    if output_split_init:
      keys = jax.random.split(key, len(self.sizes))
      blocks = [_normal(k, (last, n), math.sqrt(2.0 / n), dtype) for k, n in zip(keys, self.sizes)]
      kernel = jnp.concatenate(blocks, axis=1)
    else:
      kernel = _normal(key, (last, total), math.sqrt(1.0 / total), dtype)
    self.output_kernel = nnx.Param(kernel)

  def features(self, gamma: jax.Array) -> jax.Array:
    """h(e(gamma)): the last hidden activations (the encoded input if there are no layers)."""
    h = encode_input(gamma, self.encoding)
    for layer in self.hidden:
      h = jax.nn.leaky_relu(layer(h), LEAKY_SLOPE)
    return h

  def flat_delta(self, gamma: jax.Array) -> jax.Array:
    """W_out h(e(gamma)) of shape (..., |theta|)."""
    return self.features(gamma) @ self.output_kernel[...]

  def __call__(self, gamma: jax.Array) -> nnx.State:
    """theta(gamma): the primary's parameter state, leaves with gamma's leading dims."""
    if gamma.shape[-1] != self.input_size:
      raise ValueError(
        f"HyperNet input: last axis {gamma.shape[-1]} != input_size {self.input_size}"
      )
    _, theta0 = nnx.split(self.primary, nnx.Param)
    leaves, treedef = jax.tree.flatten(theta0)
    delta = self.flat_delta(gamma)
    lead = gamma.shape[:-1]
    offsets = np.cumsum((0,) + self.sizes)
    pieces = [
      t0 + delta[..., a:b].reshape(*lead, *t0.shape)
      for t0, a, b in zip(leaves, offsets[:-1], offsets[1:])
    ]
    return jax.tree.unflatten(treedef, pieces)

  def apply_primary(self, theta: nnx.State, *args, **kwargs):
    """The primary network as a pure function of one parameter tree theta."""
    graph, _ = nnx.split(self.primary, nnx.Param)
    return nnx.merge(graph, theta)(*args, **kwargs)

  def primary_fn(self):
    """``f(theta, *args)``: ``apply_primary`` as a closure over the primary's graph, to
    ``jax.vmap`` over per-example thetas (one theta per gamma)."""
    graph, _ = nnx.split(self.primary, nnx.Param)
    return lambda theta, *args, **kwargs: nnx.merge(graph, theta)(*args, **kwargs)
