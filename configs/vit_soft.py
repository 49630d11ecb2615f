r"""ViT with SOFT's softmax-free attention (Lu et al., NeurIPS 2021 / IJCV 2024, arXiv 2207.03341).

  python -m normjax.train --config configs/vit_soft.py --workdir /tmp/vit_soft
  python -m normjax.train --config configs/vit_soft.py:attention=soft_norm --workdir /tmp/x
  python -m normjax.train --config configs/vit_soft.py:attention=gaussian,placement=pre ...

Default: ViT on scikit-learn's 8x8 digits with 1x1 patches, so the token map is 8 x 8 (N = 64),
mean pooling (no class token: SOFT's landmarks pool the 2-D map), width 64, depth 4, 4 heads
(head dim 16), MLP 4 x width (SOFT blocks' FFN), post-LN blocks as the official
``SoftmaxFreeTransformer`` (x <- LN(x + attn(x)); x <- LN(x + FFN(x))), AdamW, 1000 steps of
batch 64. SOFT attention (``normjax/models/soft_attention.py``): Gaussian kernel with Q = K,
landmarks from a 2 x 2 stride-2 conv + LayerNorm + GELU (16 landmarks), 20 Newton iterations,
a 3 x 3 per-head depthwise conv on V.

Arguments: ``attention`` = softmax | soft | soft_norm | gaussian (the exact N x N kernel, no
approximation); ``placement`` = post (official) | pre; ``ratio`` (landmark stride), ``conv``
(DWConv size, 0 = none), ``iters`` (Newton iterations), ``distance`` = expanded (the official
"torch" kernel) | direct (the CUDA kernel's sum of squares); ``data`` = digits | cifar10 (4x4
patches of 32x32: again an 8 x 8 map, ViT-S width 384, depth 12, 6 heads, 300 epochs, the
official lr 1e-3 and clip 1.0).

Measured (the default: soft, post-LN, seed 0, 1000 steps, 3 min on an idle 2-core CPU): test
accuracy 0.9805 (loss 0.0649), train loss 0.0022. The other attentions, seeds,
approximation error and time vs N: experiments/soft/README.md.
"""

from normjax.config_args import check_choice, parse_arg, sibling_config

ATTENTIONS = ("softmax", "soft", "soft_norm", "gaussian")


def get_config(arg=None):
  arg = parse_arg(
    arg,
    attention="soft",
    placement="post",
    ratio=2,
    conv=3,
    iters=20,
    distance="expanded",
    data="digits",
  )
  check_choice(arg, "attention", ATTENTIONS)
  check_choice(arg, "placement", ("post", "pre"))
  check_choice(arg, "data", ("digits", "cifar10"))
  c = sibling_config(__file__, "vit_layernorm", f"data={arg.data}")
  c.model.update(patch_size=1, pool="mean", placement=arg.placement, mlp_dim=4 * c.model.width)
  if arg.data == "cifar10":
    c.model.update(patch_size=4)
    c.total_epochs = 300.0
  c.model.attention = arg.attention
  c.model.attention_kwargs = (
    {}
    if arg.attention == "softmax"
    else dict(
      ratio=arg.ratio, conv_size=arg.conv, newton_iters=arg.iters, reg=0.01, distance=arg.distance
    )
  )
  return c
