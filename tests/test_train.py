"""End-to-end trainer tests: smoke runs, determinism, resume, failures, sharding."""

import json
import signal
import subprocess

import jax
import numpy as np
import pytest

import normjax.workdir as workdirs
from normjax import train
from tests import trainer_utils as tu

CONFIGS = {"vit_layernorm": "vit", "resnet_batchnorm": "resnet", "gpt2_layernorm": "gpt2"}


def tiny_config(name, steps, **extra):
  return tu.apply(tu.load_config(name), tu.overrides(CONFIGS[name], steps, **extra))


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_config_smoke(name, tmp_path):
  final = train.train_and_evaluate(tiny_config(name, 4), str(tmp_path))
  assert np.isfinite(final["eval_loss"])
  rows = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4]
  assert all(np.isfinite(r["loss"]) and r["grad_norm"] > 0 for r in rows if "loss" in r)
  assert "eval_loss" in rows[-1]
  assert (tmp_path / "config.json").exists() and any((tmp_path / "tb").iterdir())
  assert tu.checkpoint_steps(tmp_path) == [4]
  state = tu.restore_state(tmp_path)
  assert set(state) == {"step", "params", "model_state", "opt_state"} and state["step"] == 4


def test_same_seed_same_result_and_other_seed_differs(tmp_path):
  runs = {}
  for tag, seed in [("a", 0), ("b", 0), ("c", 1)]:
    train.train_and_evaluate(tiny_config("resnet_batchnorm", 3, seed=seed), str(tmp_path / tag))
    runs[tag] = tu.leaves(tu.restore_state(tmp_path / tag)["params"])
  assert all(np.array_equal(x, y) for x, y in zip(runs["a"], runs["b"]))
  assert not all(np.array_equal(x, y) for x, y in zip(runs["a"], runs["c"]))


def test_resume_after_sigterm_and_sigkill_is_bitwise(tmp_path):
  """An interrupted run, restarted with the same command, ends with the same parameters."""
  values = tu.overrides("vit", 400, checkpoint_every=40, keep_checkpoints=2)
  args = lambda wd: tu.cli_args("vit_layernorm", values) + ["--workdir", str(wd)]
  reference = tu.run_cli(args(tmp_path / "ref"), tu.env())
  assert reference.returncode == 0, reference.stderr[-3000:]
  expected = tu.leaves(tu.restore_state(tmp_path / "ref"))

  for sig in (signal.SIGTERM, signal.SIGKILL):
    wd = tmp_path / sig.name
    proc = subprocess.Popen(
      args(wd),
      env=tu.env(),
      cwd=tu.ROOT,
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
    )
    tu.wait_for_checkpoint(proc, wd)
    proc.send_signal(sig)
    out = proc.communicate(timeout=300)[0]
    interrupted_at = tu.checkpoint_steps(wd)[-1]
    assert interrupted_at < 400, "the run finished before it could be interrupted"
    if sig == signal.SIGTERM:
      assert proc.returncode == 0 and "checkpoint written at step" in out, out[-3000:]
      assert interrupted_at % 40 != 0 or f"step {interrupted_at};" in out
    resumed = tu.run_cli(args(wd), tu.env())
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout
    got = tu.leaves(tu.restore_state(wd))
    assert all(np.array_equal(x, y) for x, y in zip(expected, got)), sig.name


def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
  # the resumed run changes its learning rate, which a restart normally refuses
  # (normjax.workdir): allow it here, this test is about the divergence
  monkeypatch.setattr(
    "normjax.workdir.RESUMABLE_KEYS", (*workdirs.RESUMABLE_KEYS, "optimizer.learning_rate")
  )
  config = tiny_config("vit_layernorm", 4, checkpoint_every=2)
  train.train_and_evaluate(config, str(tmp_path))
  good = tu.leaves(tu.restore_state(tmp_path)["params"])
  config = tiny_config("vit_layernorm", 8, checkpoint_every=2)
  config.optimizer.learning_rate = 1e30  # (inf is refused by the config check)
  with pytest.raises(train.NonFiniteLoss, match="non-finite .* last good checkpoint is step 4"):
    train.train_and_evaluate(config, str(tmp_path))
  assert tu.checkpoint_steps(tmp_path) == [2, 4]  # nothing written after the divergence
  assert all(
    np.array_equal(x, y) for x, y in zip(good, tu.leaves(tu.restore_state(tmp_path)["params"]))
  )


@pytest.mark.parametrize(
  "key,value,message",
  [
    ("model.norm", "nope", r"model.norm='nope': unknown norm; known: .*layernorm"),
    ("model.name", "nope", r"model.name='nope': unknown model; known: .*vit"),
    ("optimizer.name", "nope", r"optimizer.name='nope': unknown optimizer; known: .*adamw"),
    ("optimizer.learning_rate", -1.0, r"optimizer.learning_rate=-1.0: must be a number > 0"),
    ("batch_size", 12, r"batch_size=12: must be divisible by the 8 devices"),
    ("schedule.decay", "exp", r"schedule.decay='exp': valid choices are"),
    ("schedule.warmup_steps", 10, r"schedule.warmup_steps=10: must be an integer in \[0, 4\)"),
    ("model.pool", "max", r"pool"),
    ("model.widht", 3, r"model.widht=3: not an argument of model 'vit'; it accepts .*width"),
    ("optimizer.b3", 0.5, r"optimizer .*b3"),
    ("sharding", "tp", r"sharding='tp': valid choices are"),
  ],
)
def test_bad_config_fails_before_compilation(key, value, message, tmp_path, monkeypatch):
  config = tiny_config("vit_layernorm", 4)
  config.unlock()
  tu.apply(config, {key: value})

  def no_compile(*a, **k):
    raise AssertionError("compiled before the config was checked")

  monkeypatch.setattr(jax, "jit", no_compile)
  with pytest.raises((ValueError, KeyError), match=message):
    train.train_and_evaluate(config, str(tmp_path))


def test_sharded_and_fsdp_match_single_device(tmp_path):
  """8-device data parallel and 2x4 FSDP equal a 1-device run (BatchNorm statistics too)."""
  values = tu.overrides("resnet", 3)
  single = tu.run_cli(
    tu.cli_args("resnet_batchnorm", values) + ["--workdir", str(tmp_path / "one")],
    tu.env(devices=1),
  )
  assert single.returncode == 0, single.stderr[-3000:]
  expected = tu.restore_state(tmp_path / "one")
  for tag, extra in [("dp", {}), ("fsdp", {"mesh.data": 2, "mesh.fsdp": 4, "sharding": "fsdp"})]:
    config = tu.apply(tu.load_config("resnet_batchnorm"), {**values, **extra})
    train.train_and_evaluate(config, str(tmp_path / tag))
    got = tu.restore_state(tmp_path / tag)
    for part in ("params", "model_state"):
      for x, y in zip(tu.leaves(expected[part]), tu.leaves(got[part])):
        np.testing.assert_allclose(x, y, rtol=2e-4, atol=2e-5, err_msg=f"{tag} {part}")


def test_two_processes_match_one(tmp_path):
  """Two processes on localhost (jax.distributed, gloo CPU collectives) = one process."""
  import socket

  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  values = tu.overrides("vit", 3)
  args = tu.cli_args("vit_layernorm", values) + ["--workdir", str(tmp_path / "multi")]
  procs = [
    subprocess.Popen(
      args + [f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}"],
      env=tu.env(devices=2),
      cwd=tu.ROOT,
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
    )
    for i in range(2)
  ]
  outs = [p.communicate(timeout=600)[0] for p in procs]
  assert all(p.returncode == 0 for p in procs), "\n\n".join(o[-3000:] for o in outs)
  single = tu.run_cli(
    tu.cli_args("vit_layernorm", values) + ["--workdir", str(tmp_path / "one")], tu.env(devices=4)
  )
  assert single.returncode == 0, single.stderr[-3000:]
  for x, y in zip(
    tu.leaves(tu.restore_state(tmp_path / "one")), tu.leaves(tu.restore_state(tmp_path / "multi"))
  ):
    np.testing.assert_allclose(x, y, rtol=2e-4, atol=2e-5)  # all-reduce order differs


def test_init_from_another_run_loads_its_parameters(tmp_path):
  train.train_and_evaluate(tiny_config("vit_layernorm", 3), str(tmp_path / "pre"))
  config = tiny_config("vit_layernorm", 1, seed=7)
  config.schedule.warmup_steps = 0
  config.optimizer.learning_rate = 1e-12  # one step that cannot move the loaded weights
  config.init_from = {"workdir": str(tmp_path / "pre")}
  train.train_and_evaluate(config, str(tmp_path / "fine"))
  pre = tu.restore_state(tmp_path / "pre")["params"]
  fine = tu.restore_state(tmp_path / "fine")
  assert fine["step"] == 1
  for x, y in zip(tu.leaves(pre), tu.leaves(fine["params"])):
    np.testing.assert_allclose(x, y, atol=1e-9)
  config.init_from = {"workdir": str(tmp_path / "missing")}
  with pytest.raises(FileNotFoundError, match="init_from.workdir=.*no checkpoint found"):
    train.train_and_evaluate(config, str(tmp_path / "fine2"))
