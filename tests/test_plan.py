"""Planning and measuring a run: the dry run (normjax.plan), FLOPs/MFU and the profiler hook."""

import json

import jax
import numpy as np
import pytest

from normjax import hardware, plan, train
from tests import trainer_utils as tu


def tiny(**extra):
  return tu.apply(tu.load_config("gpt2_layernorm"), tu.overrides("gpt2", 3, **extra))


def test_dry_run_reports_memory_flops_and_collectives_per_device():
  dp = plan.plan(tiny(batch_size=16))
  fsdp = plan.plan(
    tiny(batch_size=16, **{"mesh.data": 1, "mesh.fsdp": 8, "sharding": "fsdp", "model.width": 128})
  )
  wide_dp = plan.plan(tiny(batch_size=16, **{"model.width": 128}))
  assert dp["devices"] == 8 and dp["flops_per_step"] > 0
  n = dp["parameters"]
  assert dp["params_bytes"] == 4 * n  # replicated float32
  assert dp["opt_state_bytes"] >= 2 * 4 * n  # Adam's two moments, replicated
  # FSDP splits the large leaves 8 ways: parameters and moments shrink per device
  assert fsdp["params_bytes"] < wide_dp["params_bytes"] / 4
  assert fsdp["opt_state_bytes"] < wide_dp["opt_state_bytes"] / 4
  assert "all-reduce" in dp["collectives"]  # the data-parallel gradient sum
  assert "all-gather" in fsdp["collectives"] or "reduce-scatter" in fsdp["collectives"]
  text = plan.format_plan(fsdp)
  assert "optimizer state" in text and "temporaries" in text and "collectives" in text


def test_collectives_are_read_from_hlo_text():
  hlo = (
    "%all-reduce.1 = f32[128,64]{1,0} all-reduce(f32[128,64]{1,0} %x), replica_groups={}\n"
    "%ag = (bf16[8]{0}, f32[4]{0}) all-gather-start(bf16[1]{0} %y)\n"
    "%ag.done = bf16[8]{0} all-gather-done(%ag)\n"
  )
  found = hardware.collectives(hlo)
  assert found == {
    "all-reduce": {"count": 1, "bytes": 128 * 64 * 4},
    "all-gather": {"count": 1, "bytes": 8 * 2 + 4 * 4},
  }


def test_mfu_is_null_without_a_known_peak_and_a_ratio_with_one():
  assert hardware.peak_flops() is None  # CPU
  assert hardware.mfu(1e9, 10.0) is None

  class H100:
    device_kind = "NVIDIA H100 80GB HBM3"

  assert hardware.mfu(989e12 / 4, 2.0, device=H100()) == pytest.approx(0.5)


def test_profile_trace_and_mfu_in_metrics(tmp_path):
  config = tiny(**{"profile.start_step": 2, "profile.num_steps": 1})
  train.train_and_evaluate(config, str(tmp_path))
  traces = list((tmp_path / "profile").rglob("*.xplane.pb"))
  assert len(traces) == 1 and traces[0].stat().st_size > 0
  rows = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  logged = [r for r in rows if "loss" in r]
  assert logged and all(r["mfu"] is None for r in logged)  # no CPU peak in the table
  assert all(r["flops_per_sec"] > 0 for r in logged)
  assert np.isfinite(logged[-1]["steps_per_sec"])
  assert jax.device_count() == 8
