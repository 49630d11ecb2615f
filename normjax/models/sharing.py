"""Parameter sharing across depth for transformer stacks: ``model.sharing``.

* ``'none'``: every block owns its attention, FFN and norms (the standard transformer);
* ``'weights'``: one attention and one FFN (dense MLP or mixture of experts) serve every block;
  each block keeps its own norms: WideNet's "individual LayerNorms" (Xue et al., AAAI 2022,
  arXiv 2107.11817; XueFuzhao/WideNet_Code ``widenet/modeling.py``, which builds one attention
  and one Switch layer and a new ``LayerNormalization`` in every layer);
* ``'all'``: the norms are shared too (ALBERT / Universal-Transformer style): block 0 applied
  ``depth`` times, with its own dropout randomness per application.

Sharing is by reference: block i > 0 holds the same NNX module objects as block 0, so
``nnx.split`` / ``nnx.state`` hold each shared module once (at ``blocks/0/...``), the trainer's
parameter count, optimizer state, sharding and checkpoints count it once, and its gradient is the
sum over the blocks that apply it. With a mixture of experts, each block keeps its own thin
``MixtureOfExperts`` (it records that layer's balance loss and draws that layer's router noise)
over the shared experts and router (``normjax.models.moe.install``).

``'all'`` refuses norms whose state cannot be shared by several applications in one step: those
that need their block's site (``needs_site``: FakeLN's per-block removal schedule), those whose
backward pass writes a state (``GradStat``: PowerNorm, Unified Normalization: the cotangents of
``depth`` applications would be summed into one update) and those that record an auxiliary loss
(only the last application's would count). Running statistics of batch-statistics norms are
updated once per application, in order (as a shared PyTorch module does).
"""

from __future__ import annotations

import jax
from flax import nnx

from normjax.models import check_choice
from normjax.variables import GradStat

SHARING = ("none", "all", "weights")
BLOCK_NORMS = (
  "attn_norm",
  "attn_output_norm",
  "attn_residual_norm",
  "mlp_norm",
  "mlp_output_norm",
  "mlp_residual_norm",
)


def _check_shareable(norm_module, name: str):
  kind = type(norm_module).__name__
  why = None
  if norm_module.needs_site:
    why = "needs its own site per block (needs_site)"
  elif jax.tree.leaves(nnx.state(norm_module, GradStat)):
    why = "keeps a state that its backward pass updates (GradStat)"
  elif norm_module.records_aux_loss:
    why = "records an auxiliary loss per application"
  if why:
    raise ValueError(
      f"model argument sharing='all': the norm {kind} at {name} {why}, so one instance cannot "
      f"serve every block; use sharing='weights' (individual norms per block)"
    )


def share_across_depth(blocks, sharing: str) -> None:
  """Ties blocks[1:]'s modules to blocks[0]'s as ``sharing`` says (see the module docstring).

  A ``MixtureOfExperts`` FFN is left per block (``moe.install`` already shared its parts)."""
  from normjax.models.moe import MixtureOfExperts

  check_choice("sharing", sharing, SHARING)
  if sharing == "none" or len(blocks) < 2:
    return
  first = blocks[0]
  names = ["attn"]
  if not isinstance(first.mlp, MixtureOfExperts):
    names.append("mlp")
  if sharing == "all":
    for name in BLOCK_NORMS:
      if getattr(first, name) is not None:
        _check_shareable(getattr(first, name), name)
        names.append(name)
  for block in blocks[1:]:
    for name in names:
      setattr(block, name, getattr(first, name))


# The five arms of the WideNet study (configs/vit_widenet.py, configs/gpt2_widenet.py):
# name -> (model.sharing, whether the FFN is a mixture of experts).
WIDENET_ARMS = {
  "unshared": ("none", False),  # (a) the standard transformer
  "shared_all": ("all", False),  # (b) ALBERT / universal: everything shared, norms too
  "shared_weights": ("weights", False),  # (c) shared attention + dense FFN, individual norms
  "widenet": ("weights", True),  # (d) WideNet: shared attention + MoE, individual norms
  "widenet_shared_ln": ("all", True),  # (e) WideNet with shared norms
}
