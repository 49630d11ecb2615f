"""scripts/norm_zoo.py: the probe's causality check and its report."""

import json
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "scripts"))
import norm_zoo  # noqa: E402

TINY_GPT2 = ["model.depth=1", "model.width=32", "model.num_heads=2", "batch_size=8"]


def _gpt2(norm):
  config = norm_zoo.load(f"{norm_zoo._ROOT}/configs/gpt2_layernorm.py:norm={norm}", TINY_GPT2)
  config.data.seq_len = 16
  return config


def test_layernorm_gpt2_applies_without_notes():
  step, state, batch, notes = norm_zoo.compiled_step(_gpt2("layernorm"))
  assert notes == {} and "targets" in batch


def test_batch_statistics_in_gpt2_are_noted_not_refused():
  # BatchNorm trains on statistics over all positions of the batch (later tokens included)
  # and evaluates with its running averages, which see nothing of the sequence.
  *_, notes = norm_zoo.compiled_step(_gpt2("batchnorm"))
  assert notes == {"note": "training-mode statistics include later tokens of the batch"}


def test_per_sequence_statistics_in_gpt2_are_refused():
  # InstanceNorm normalizes each sequence over its positions in eval mode too: the logit at
  # position t would read tokens after t.
  with pytest.raises(ValueError, match="not causal"):
    norm_zoo.compiled_step(_gpt2("instancenorm"))


def test_report_table_counts_divergences_and_lists_refusals(tmp_path):
  rows = [
    {"arm": "layernorm", "seed": 0, "eval_accuracy": 0.9},
    {"arm": "layernorm", "seed": 1, "eval_accuracy": 0.8},
    {"arm": "rmsnorm", "seed": 0, "diverged_at_step": 50},
    {"arm": "rmsnorm", "seed": 1, "eval_accuracy": 0.7},
  ]
  (tmp_path / "vit.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  info = {
    "baseline": "layernorm",
    "rounds": 1,
    "steps": 1,
    "jax": "x",
    "load_average_1min": 0.0,
    "norms": {
      "layernorm": {"applies": True, "step_ratio": 1.0},
      "rmsnorm": {"applies": True, "step_ratio": 0.8},
      "region_norm_b": {"applies": False, "reason": "ValueError: needs the mask"},
    },
  }
  md = tmp_path / "vit.md"
  norm_zoo.report("vit", info, str(tmp_path / "vit.jsonl"), str(md), str(tmp_path / "vit.png"))
  text = md.read_text()
  assert "| layernorm | 2 | 0.8500 ± 0.0500 | 0 | 1.00 |" in text
  assert "| rmsnorm | 2 | 0.7000 ± 0.0000 | 1 | 0.80 |" in text
  assert "`region_norm_b`: ValueError: needs the mask" in text
  assert (tmp_path / "vit.png").stat().st_size > 0
