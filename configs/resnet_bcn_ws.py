r"""ResNet with Batch-Channel Normalization + Weight Standardization (Qiao et al. 2019).

  python -m normjax.train --config configs/resnet_bcn_ws.py --workdir /tmp/resnet_bcn_ws
  python -m normjax.train --config configs/resnet_bcn_ws.py:batch=2,estimated=True \
      --workdir /tmp/resnet_bcn_ws_b2           # micro-batch with estimated BN statistics

``configs/resnet_batchnorm.py`` (3-stage basic-block ResNet, width 32, CIFAR stem; SGD +
Nesterov, lr 0.1, 1000 steps of batch 128) with every conv a ``WSConv``
(``normjax/models/ws_conv.py``) and every norm a ``batch_channel_norm``
(``normjax/norms/batch_channel.py``) with the official settings: 32 groups, eps 1e-5,
PyTorch BN momentum 0.1 (0.9 here). ``estimated=True`` uses EstBN for the batch part
(normalizes with running statistics updated from each batch; for micro-batches).
``batch=N`` sets the batch size; below 32 the learning rate scales linearly (0.1 N / 32)
and the run takes 4000 steps.

Measured (3 seeds): test accuracy 0.984 ± 0.003 (default; BatchNorm 0.985), 0.957 ± 0.004
(``:batch=2,estimated=True``; BatchNorm at batch 2 0.937); experiments/bcn_ws/README.md.

Paper scale: ``:data=cifar10`` (ResNet-18, 200 epochs; micro-batch ``batch=2`` per device
is the paper's 1-2 images/GPU regime).
"""

from normjax.config_args import parse_arg, sibling_config, sibling_module


def get_config(arg=None):
  arg = parse_arg(arg, data="digits", batch=128, estimated=False, groups=32)
  c = sibling_config(__file__, "resnet_batchnorm", f"data={arg.data},norm=batch_channel_norm")
  c.model.conv = "ws"
  c.model.norm_kwargs = dict(
    num_groups=arg.groups, momentum=0.9, epsilon=1e-5, estimated=arg.estimated
  )
  return sibling_module(__file__, "resnet_evonorm").micro_batch(c, arg)
