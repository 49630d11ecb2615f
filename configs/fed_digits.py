r"""Multi-domain federated learning on the digits (FedWon's setting): one domain per client.

  python -m normjax.tools.federated --config configs/fed_digits.py:arm=fedwon --workdir /tmp/fw
  python -m normjax.tools.federated --config configs/fed_digits.py:arm=fedbn,batch=1 \
      --workdir /tmp/fedbn_b1 --seeds 3
  # arms: fedavg (BatchNorm, FedAvg), fedbn (BatchNorm, local BN), fedavg_gn (GroupNorm),
  #       fedavg_ln (LayerNorm), fedwon (no norm: Scaled WS + AGC, FedAvg)
  # arguments: batch (per client), rounds, epochs (local epochs per round), lr

Five clients (``normjax/tools/federated.py`` has the protocol): disjoint shards of the
embedded digits' train split (287 images each) as original, inverted, rotated, noisy and
blurred images; ``rounds`` FedAvg rounds of ``epochs`` local epochs; per-domain test accuracy.
The network is ``configs/resnet_batchnorm.py``'s 3-stage ResNet (width 32) with the arm's norm,
or for ``fedwon`` ``configs/resnet_nf.py``'s normalizer-free ResNet (Scaled WS convs, AGC with
lambda 0.16, the residual branches on from the start: ``skip_gain_init=1``). As in the FedBN
code: plain SGD, BatchNorm with PyTorch's momentum 0.1 (flax 0.9), no global-norm clipping
for the normalized arms. Learning rate ``lr`` at batch 32 scaled linearly with the batch,
cosine decay over all local steps (the tool sets the schedule's length). FedWon's paper uses
Digits-Five / Office-Caltech-10 / DomainNet with a 6-layer CNN or AlexNet; this is the same
protocol at digits scale.

Measured (batch 32, 3 seeds): mean per-domain test accuracy FedAvg+BN 0.532, FedBN 0.749,
FedWon 0.903; details in experiments/fedwon/README.md.
"""

from normjax.config_args import check_choice, parse_arg, sibling_config

ARMS = {
  "fedavg": ("fedavg", "batchnorm", {"momentum": 0.9}),  # PyTorch's BN momentum 0.1, as FedBN
  "fedbn": ("fedbn", "batchnorm", {"momentum": 0.9}),
  "fedavg_gn": ("fedavg", "groupnorm", {"num_groups": 8}),
  "fedavg_ln": ("fedavg", "layernorm", {}),
  "fedwon": ("fedavg", None, {}),
}
DOMAINS = ("original", "inverted", "rotated", "noisy", "blurred")


def get_config(arg=None):
  arg = parse_arg(arg, arm="fedwon", batch=32, rounds=20, epochs=1.0, lr=0.1)
  check_choice(arg, "arm", tuple(ARMS))
  algorithm, norm, norm_kwargs = ARMS[arg.arm]
  if norm is None:
    c = sibling_config(__file__, "resnet_nf", f"batch={arg.batch}")
    c.model.skip_gain_init = 1.0
  else:
    c = sibling_config(__file__, "resnet_batchnorm", f"norm={norm}")
    c.model.norm_kwargs = norm_kwargs
    c.grad_clip_norm = None  # as the FedBN code; FedWon's AGC is part of that method
  c.batch_size = arg.batch
  c.optimizer = dict(name="sgd", learning_rate=arg.lr * arg.batch / 32, momentum=0.0)
  c.schedule.warmup_steps = 0
  c.federated = dict(
    algorithm=algorithm,
    domains=DOMAINS,
    rounds=arg.rounds,
    local_steps=1,
    local_epochs=arg.epochs,
    examples_per_client=None,
    eval_every=5,
  )
  c.checkpoint_every = 5
  return c
