"""The type and range of every config key, checked before anything compiles.

``check_keys(config)`` walks every leaf of a trainer config and checks it against the first
rule that matches its dotted key: an exact key (``schedule.warmup_steps``), else a pattern
with ``*`` for one key component (``optimizer.groups.*.b1``, ``model.norm_kwargs.*``
resolved by the leaf name). A failure is one ``ValueError`` line,
``config key <key>=<value>: <what would work>``.

Keys whose values name things (``model.name``, ``model.norm``, ``optimizer.name``,
``data.name``, label names, string choices of a model such as ``model.stem``) are checked
by their registries and by the model constructors, whose "model argument K=..." errors
``normjax.run.build`` reports as config keys; ``data.*`` options are checked by
``normjax.data``. What may hold anything is listed in ``FREE`` with the reason.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
from typing import Any

# ------------------------------------------------------------------------------- rules


@dataclasses.dataclass(frozen=True)
class Rule:
  """``kind`` 'int' | 'float' | 'bool' | 'str' | 'ints' (a tuple of ints) | 'dict';
  numbers within [low, high] (``open_low``/``open_high``: strict); ``none`` allows None."""

  kind: str
  low: float | None = None
  high: float | None = None
  open_low: bool = False
  open_high: bool = False
  none: bool = False
  also: tuple = ()  # extra allowed values outside the range (e.g. -1 for "the rest")

  def expected(self) -> str:
    if self.kind in ("bool", "str", "dict", "strs"):
      text = {
        "bool": "True or False",
        "str": "a string",
        "dict": "a mapping",
        "strs": "a non-empty tuple of strings",
      }[self.kind]
    else:
      noun = {"int": "an integer", "float": "a number", "ints": "a tuple of integers"}[self.kind]
      bounds = []
      if self.low is not None:
        bounds.append(f"{'>' if self.open_low else '>='} {self.low:g}")
      if self.high is not None:
        bounds.append(f"{'<' if self.open_high else '<='} {self.high:g}")
      text = noun + (" " + " and ".join(bounds) if bounds else "")
      if self.also:
        text += f" (or {', '.join(map(repr, self.also))})"
    return text + (" or None" if self.none else "")

  def _number_ok(self, v) -> bool:
    if v in self.also:
      return True
    if isinstance(v, float) and not math.isfinite(v):
      return False
    if self.low is not None and (v <= self.low if self.open_low else v < self.low):
      return False
    return not (self.high is not None and (v >= self.high if self.open_high else v > self.high))

  def ok(self, v) -> bool:
    if v is None:
      return self.none
    if self.kind == "bool":
      return isinstance(v, bool)
    if self.kind == "str":
      return isinstance(v, str)
    if self.kind == "dict":
      return isinstance(v, dict)
    if self.kind == "strs":
      return isinstance(v, (tuple, list)) and len(v) > 0 and all(isinstance(x, str) for x in v)
    if self.kind == "ints":
      return (
        isinstance(v, (tuple, list))
        and len(v) > 0
        and all(isinstance(x, int) and not isinstance(x, bool) and self._number_ok(x) for x in v)
      )
    integer = isinstance(v, int) and not isinstance(v, bool)
    if self.kind == "int" and not integer:
      return False
    if self.kind == "float" and not (integer or isinstance(v, float)):
      return False
    return self._number_ok(v)

  def bad_values(self) -> list:
    """Values this rule must refuse: a wrong type, and out-of-range numbers (for tests)."""
    bad: list[Any] = [[1, 2]] if self.kind in ("str", "dict", "strs") else ["not-a-value"]
    if self.kind == "int":
      bad.append(1.5)
    if self.kind == "bool":
      bad.append(2)
    if self.kind in ("int", "float", "ints"):
      scalar = lambda x: (x,) if self.kind == "ints" else x
      if self.low is not None:
        bad.append(scalar(self.low - 1 if not self.open_low else self.low))
      if self.high is not None:
        bad.append(scalar(self.high + 1 if not self.open_high else self.high))
    if not self.none:
      bad.append(None)
    return [b for b in bad if not (b in self.also if not isinstance(b, list) else False)]


COUNT = Rule("int", low=1)  # sizes, steps, cadences
INDEX = Rule("int", low=0)  # seeds, offsets, warmups
POSITIVE = Rule("float", low=0, open_low=True)  # learning rates, eps, scales
NONNEGATIVE = Rule("float", low=0)  # decays, loss weights
FRACTION = Rule("float", low=0, high=1)  # momenta, mixing weights
BETA = Rule("float", low=0, high=1, open_high=True)  # Adam betas: 1 never forgets
RATE = Rule("float", low=0, high=1, open_high=True)  # dropout
BOOL = Rule("bool")
NAME = Rule("str")  # resolved by a registry or a constructor
OPTIONAL_NAME = Rule("str", none=True)

OPTIMIZER_LEAVES = {
  "name": NAME,
  "learning_rate": POSITIVE,
  "weight_decay": NONNEGATIVE,
  "b1": BETA,
  "b2": BETA,
  "eps": NONNEGATIVE,
  "momentum": FRACTION,
  "dampening": FRACTION,
  "nesterov": BOOL,
  "delta": POSITIVE,
  "wd_ratio": NONNEGATIVE,
  "scale": POSITIVE,
  "update_proj_gap": COUNT,
  "conda_mask": NAME,
  "labels": NAME,
  "beta": BETA,
  "consistent_rms": Rule("float", low=0, open_low=True, none=True),
  "ns_steps": COUNT,
  "decay_mask": NAME,
  "rotated_momentum": BOOL,
  "singular_value_rtol": Rule("float", low=0, open_low=True, high=1, none=True),
  "project_momentum": BOOL,
  "gradient": NAME,  # spd_rsgd: 'official' | 'bw', checked by the optimizer
  "base": NAME,  # nap: the wrapped optimizer, resolved by the registry
  "reorth_every": COUNT,  # grassmann_rsgd
  "lr_factor": POSITIVE,
  "qr_sign_fix": BOOL,
  # q_galore (normjax/optim/_q_galore.py); side / lazy_cosine are checked by the optimizer
  "rank": COUNT,
  "galore_mask": NAME,
  "side": NAME,
  "proj_bits": Rule("int", low=1, high=8, none=True),
  "proj_group_size": COUNT,
  "proj_pack": BOOL,
  "lazy_cosine": OPTIONAL_NAME,
  "cos_threshold": Rule("float", low=-1, high=1),
  "gamma_proj": Rule("float", low=1),
  "queue_size": COUNT,
  "decay_after_step": BOOL,
  "a": POSITIVE,  # compander_adam: Weight Compander's w = a arctan(v / b)
  "b": POSITIVE,
}
NORM_LEAVES = {
  "epsilon": POSITIVE,
  "momentum": FRACTION,
  "alpha_fwd": FRACTION,
  "alpha_bkw": FRACTION,
  "alpha": FRACTION,
  "warmup_steps": INDEX,
  "groups": COUNT,
  "num_groups": COUNT,
  "group_size": COUNT,
  "window": COUNT,
  "estimated": BOOL,
  "outlier_filtration": BOOL,
  "removal_start": INDEX,
  "gap_mlp": COUNT,
  "gap_qk": COUNT,
  "gap_v": COUNT,
  "aux_loss_weight": NONNEGATIVE,
  "eot_token": Rule("int", low=0, none=True),
  "use_scale": BOOL,
  "use_bias": BOOL,
  "kappa": FRACTION,
  "num_tasks": COUNT,
  "aux_from_task": INDEX,
  "init_weight": Rule("float"),
  "renormalize_weights": BOOL,
  "unbiased_running_var": BOOL,
  "mode": NAME,
  "coloring": NAME,
  "whitening_weight": NONNEGATIVE,
  "coloring_weight": NONNEGATIVE,
  "mix_alpha": Rule("float", low=0, high=1, none=True),
}
MODEL_LEAVES = {
  "name": NAME,
  "norm": NAME,
  "decoder_norm": NAME,
  "norm_kwargs": Rule("dict"),
  "decoder_norm_kwargs": Rule("dict"),
  "width": COUNT,
  "depth": COUNT,
  "num_heads": COUNT,
  "mlp_dim": COUNT,
  "mlp_ratio": Rule("float", low=0, open_low=True),
  "patch_size": COUNT,
  "num_blocks": COUNT,
  "dilation": COUNT,
  "dropout": RATE,
  "alpha": NONNEGATIVE,
  "threshold": FRACTION,
  "skip_gain_init": Rule("float"),
  "stage_sizes": Rule("ints", low=1),
  "zero_init_residual": BOOL,
  "zero_mean_writers": BOOL,
  "tie_embeddings": BOOL,
  "vocab_size": COUNT,
  "max_len": COUNT,
  "embedding_norm": BOOL,
  "placement": NAME,
  "pool": NAME,
  "block": NAME,
  "stem": NAME,
  "conv": NAME,
  "activation": NAME,
  "ibn": OPTIONAL_NAME,
  # checked by the model constructor: ResNet channel_attention.ATTENTIONS, ViT / GPT-2
  # soft_attention.ATTENTIONS
  "attention": NAME,
  "remat": NAME,
  "scan_layers": BOOL,  # ViT / GPT-2: normjax.models.layer_stack
  "spd_norm": NAME,
  "theta": POSITIVE,
  "hidden": COUNT,
  "bn_momentum": Rule("float", low=0, high=1, open_high=True),
  "official_power_grad": BOOL,
  "freeze_bimap": BOOL,
  "reeig_threshold": POSITIVE,
  "primary_hidden": COUNT,  # lambda_hypernet (MIP)
  "hidden_sizes": Rule("ints", low=1),
  "encoding": NAME,  # 'cos|sin' | 'z|1-z' | 'none', checked by the model
  "init_independent_weights": BOOL,
  "output_split_init": BOOL,
  "eval_grid": COUNT,
  "dtype": NAME,
  "head": NAME,  # 'linear' | 'cosine' | 'grassmann', checked by normjax.models.heads
  "head_kwargs": Rule("dict"),
  "head_kwargs.subspace_dim": COUNT,
  "head_kwargs.gamma": POSITIVE,
  "attention_kwargs": Rule("dict"),
  "sharing": NAME,  # normjax.models.sharing: none | weights | all
  "moe": Rule("dict", none=True),  # normjax.models.moe.MoeConfig; None / {}: no MoE
}
ATTENTION_LEAVES = {  # SOFT (normjax.models.soft_attention.SoftmaxFreeAttention)
  "ratio": COUNT,
  "conv_size": INDEX,
  "newton_iters": COUNT,
  "reg": NONNEGATIVE,
  "distance": NAME,
}
MOE_LEAVES = {
  "num_experts": COUNT,
  "top_k": COUNT,
  "capacity_factor": POSITIVE,
  "aux_weight": NONNEGATIVE,
  "share_router": BOOL,
  "expert_out_gelu": BOOL,
  "expert_mlp_dim": Rule("int", low=1, none=True),
}

RULES = {
  "seed": INDEX,
  "batch_size": COUNT,
  "eval_batch_size": COUNT,
  "grad_accum_steps": COUNT,
  "total_steps": Rule("int", low=1, none=True),
  "total_epochs": Rule("float", low=0, open_low=True, none=True),
  "log_every": COUNT,
  "eval_every": INDEX,
  "checkpoint_every": COUNT,
  "keep_checkpoints": COUNT,
  "grad_clip_norm": Rule("float", low=0, open_low=True, none=True),
  "adaptive_grad_clip": Rule("float", low=0, open_low=True, none=True),
  "sharding": NAME,
  "trainable": OPTIONAL_NAME,
  "mesh.data": Rule("int", low=1, also=(-1,)),
  "mesh.fsdp": Rule("int", low=1, also=(-1,)),
  "schedule.warmup_steps": INDEX,
  "schedule.decay": NAME,
  "schedule.final_fraction": FRACTION,
  "init_from.step": Rule("int", low=0, none=True),
  "profile.start_step": COUNT,
  "profile.num_steps": INDEX,
  "continual.num_tasks": COUNT,
  "continual.buffer_size": COUNT,
  "continual.replay_batch_size": COUNT,
  "weight_compander.a": POSITIVE,  # normjax.models.weight_compander
  "weight_compander.b": POSITIVE,
  "weight_compander.learnable": BOOL,
  "weight_compander.weight_decay": NONNEGATIVE,
  "continual.method": NAME,  # checked by normjax.tools.continual (er | er_ace)
  "federated.algorithm": NAME,  # checked by normjax.tools.federated (fedavg | fedbn)
  "federated.domains": Rule("strs"),  # each a normjax.data.corruptions.DOMAINS name
  "federated.rounds": COUNT,
  "federated.local_steps": COUNT,
  "federated.local_epochs": Rule("float", low=0, open_low=True, none=True),
  "federated.examples_per_client": Rule("int", low=1, none=True),
  "federated.eval_every": COUNT,
  "plasticity.shift": NAME,  # checked by normjax.tools.plasticity
  "plasticity.num_tasks": COUNT,
  "plasticity.steps_per_task": COUNT,
  "plasticity.examples": Rule("int", low=1, none=True),
  "weight_quant.bits": Rule("int", low=1, high=8, none=True),  # None: float weights
  "weight_quant.group_size": COUNT,
  "weight_quant.rounding": NAME,  # 'stochastic' | 'nearest', checked by quantized_weights
  "weight_quant.mask": NAME,
  **{f"optimizer.{k}": v for k, v in OPTIMIZER_LEAVES.items()},
  **{f"optimizer.groups.*.{k}": v for k, v in OPTIMIZER_LEAVES.items()},
  **{f"model.norm_kwargs.{k}": v for k, v in NORM_LEAVES.items()},
  **{f"model.decoder_norm_kwargs.{k}": v for k, v in NORM_LEAVES.items()},
  **{f"model.{k}": v for k, v in MODEL_LEAVES.items()},
  **{f"model.attention_kwargs.{k}": v for k, v in ATTENTION_LEAVES.items()},
  **{f"model.moe.{k}": v for k, v in MOE_LEAVES.items()},
}

FREE = {
  "init_from.workdir": "a path, checked when it is read (a missing run is a one-line error)",
  "init_from.hf": "a path or hub id, checked when it is read (normjax.interop.hf_files.resolve)",
  "data.*": "the data options, each checked by normjax.data with the config key named",
}


# ------------------------------------------------------------------------------- walking
def flatten(tree, prefix: str = "") -> dict:
  """Dotted keys of every leaf (a non-empty dict is walked; an empty one is a leaf)."""
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict) and value:
      out.update(flatten(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


def rule_for(key: str) -> Rule | str | None:
  """The key's ``Rule``, the reason it is ``FREE``, or None (no rule: an unknown key)."""
  if key in RULES:
    return RULES[key]
  for pattern, rule in RULES.items():
    if (
      "*" in pattern and key.count(".") == pattern.count(".") and fnmatch.fnmatchcase(key, pattern)
    ):
      return rule
  for pattern, reason in FREE.items():
    if fnmatch.fnmatchcase(key, pattern):
      return reason
  return None


def check_keys(config) -> None:
  """Checks every leaf of ``config`` (see the module docstring); keys without a rule are
  left to their consumers (a model's signature, an optimizer's keyword arguments)."""
  plain = config.to_dict() if hasattr(config, "to_dict") else dict(config)
  for key, value in flatten(plain).items():
    rule = rule_for(key)
    if isinstance(rule, Rule) and not rule.ok(value):
      raise ValueError(f"config key {key}={value!r}: must be {rule.expected()}")
