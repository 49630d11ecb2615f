r"""WideNet ViT (Xue et al., AAAI 2022, arXiv 2107.11817) on the embedded digits.

  python -m normjax.train --config configs/vit_widenet.py --workdir /tmp/vit_widenet
  python -m normjax.train --config configs/vit_widenet.py:arm=shared_weights,norm=powernorm

Default: WideNet, one attention and one mixture of experts (4 experts, top-2, capacity factor
1.2, balance weight 0.01, one router, GELU on the expert outputs: WideNet-B's settings in
XueFuzhao/WideNet_Code widenet/submit_tpu.sh) shared by all 6 blocks, each block with its own
two LayerNorms; ViT width 64, 4 heads, MLP 128, 2x2 patches, class token; AdamW, 400 steps of
batch 64 (configs/vit_layernorm.py's recipe at depth 6, shorter).

``arm`` picks the ablation (normjax.models.sharing.WIDENET_ARMS): ``unshared`` (ViT),
``shared_all`` (ALBERT-style, norms shared too), ``shared_weights`` (shared attention + dense
MLP, individual norms), ``widenet`` (default), ``widenet_shared_ln`` (WideNet with shared
norms). ``share_router=False`` gives every layer its own router (ColossalAI's re-implementation);
``norm`` any registered norm (``shared_all`` refuses norms with per-block state).

Measured: test accuracy 0.8914 (seed 0, 440 s on the shared 2-core CPU); the five arms over
3 seeds in experiments/widenet/README.md.
"""

from normjax.config_args import base_arg, check_choice, parse_arg, sibling_config
from normjax.models.sharing import WIDENET_ARMS


def widenet_model(c, arg):
  """Sets ``c.model.sharing`` and ``c.model.moe`` from the arm and MoE arguments."""
  check_choice(arg, "arm", WIDENET_ARMS)
  sharing, use_moe = WIDENET_ARMS[arg.arm]
  c.model.sharing = sharing
  c.model.moe = (
    dict(
      num_experts=arg.experts,
      top_k=arg.top_k,
      capacity_factor=arg.capacity_factor,
      aux_weight=arg.aux_weight,
      share_router=arg.share_router,
      expert_out_gelu=arg.expert_out_gelu,
    )
    if use_moe
    else None
  )
  return c


MOE_ARGS = dict(
  arm="widenet",
  experts=4,
  top_k=2,
  capacity_factor=1.2,
  aux_weight=0.01,
  share_router=True,
  expert_out_gelu=True,
)


def get_config(arg=None):
  arg = parse_arg(arg, data="digits", norm="layernorm", depth=6, **MOE_ARGS)
  c = sibling_config(__file__, "vit_layernorm", base_arg(arg, ("data", "norm")))
  c.model.depth = arg.depth
  if arg.data == "digits":
    c.total_steps = 400  # the experiment's length (experiments/widenet)
  return widenet_model(c, arg)
