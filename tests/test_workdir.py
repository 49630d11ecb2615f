"""A run's workdir survives mistakes: config drift, damaged or interrupted checkpoints, a
second process, a failed write; every failure is one line (normjax.workdir, .checkpoint)."""

import hashlib
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

import normjax.workdir as workdirs
from normjax import checkpoint, train
from tests import trainer_utils as tu

STEPS = 6


def tiny(steps=STEPS, **extra):
  values = tu.overrides("gpt2", steps, checkpoint_every=2, keep_checkpoints=3, **extra)
  return tu.apply(tu.load_config("gpt2_layernorm"), values)


def cli(workdir, steps=STEPS, extra=(), **values):
  args = tu.cli_args(
    "gpt2_layernorm", tu.overrides("gpt2", steps, checkpoint_every=2, keep_checkpoints=3, **values)
  )
  return args + ["--workdir", str(workdir), *extra]


def hashes(root) -> dict:
  out = {}
  for dirpath, _, files in os.walk(root):
    for name in files:
      path = os.path.join(dirpath, name)
      with open(path, "rb") as f:
        out[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
  return out


def damage(workdir, step):
  """Truncates every data file of checkpoint ``step`` (a disk or copy error)."""
  root = os.path.join(workdir, "checkpoints", str(step), "state")
  files = [
    os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs if os.path.basename(d) == "d"
  ]
  assert files
  for path in files:
    with open(path, "r+b") as f:
      f.truncate(8)


def assert_one_line(result, starts):
  assert result.returncode != 0
  err = result.stderr
  assert "Traceback" not in err and "Event loop is closed" not in err, err[-3000:]
  assert err.strip().splitlines()[-1].startswith(starts), err[-3000:]


def test_config_drift_is_refused_before_anything_is_written(tmp_path):
  wd = tmp_path / "w"
  train.train_and_evaluate(tiny(3), str(wd))
  before = hashes(wd)
  changed = tiny(3)
  changed.model.width = 48
  changed.optimizer.learning_rate = 1e-2
  with pytest.raises(
    workdirs.WorkdirError,
    match=r"model.width: 32 -> 48.*optimizer."
    r"learning_rate: 0.003 -> 0.01.*new --workdir.*--restart",
  ):
    train.train_and_evaluate(changed, str(wd))
  assert hashes(wd) == before  # not one byte written

  refused = tu.run_cli(cli(wd, 3, **{"model.width": 48}), tu.env())
  assert_one_line(refused, "normjax.train: the config differs")
  assert hashes(wd) == before

  # resumable keys: accepted, recorded, and config.json still the run's original
  longer = tiny(5)
  longer.eval_every = 4
  train.train_and_evaluate(longer, str(wd))
  assert tu.checkpoint_steps(wd)[-1] == 5
  assert (wd / "config.json").read_bytes() == (tmp_path / "w" / "config.json").read_bytes()
  assert json.loads((wd / "config.json").read_text())["total_steps"] == 3
  starts = sorted((wd / "configs").iterdir())
  assert len(starts) == 2
  second = json.loads(starts[1].read_text())
  assert second["start_step"] == 3 and second["amended"]["total_steps"] == {"old": 3, "new": 5}
  assert second["config"]["total_steps"] == 5

  # --restart: the old run moves aside whole, the new one starts from step 0
  train.train_and_evaluate(changed, str(wd), restart=True)
  aside = [p for p in tmp_path.iterdir() if p.name.startswith("w.replaced-")]
  assert len(aside) == 1 and tu.checkpoint_steps(aside[0])[-1] == 5
  assert json.loads((wd / "config.json").read_text())["model"]["width"] == 48
  assert tu.restore_state(wd)["step"] == 3


def test_damaged_latest_checkpoint_is_skipped_and_resume_is_bitwise(tmp_path):
  reference = tmp_path / "ref"
  train.train_and_evaluate(tiny(), str(reference))
  expected = tu.leaves(tu.restore_state(reference))
  wd = tmp_path / "w"
  train.train_and_evaluate(tiny(), str(wd))
  damage(wd, 6)
  resumed = tu.run_cli(cli(wd), tu.env(devices=8))  # the 8 devices of the in-process runs
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "resumed from" in resumed.stdout and "at step 4" in resumed.stdout
  warnings = [l for l in resumed.stderr.splitlines() if l.startswith("warning:")]
  assert len(warnings) == 1 and "checkpoint step 6" in warnings[0], resumed.stderr[-3000:]
  assert "unreadable_checkpoints" in warnings[0]
  assert "Traceback" not in resumed.stderr and "Event loop is closed" not in resumed.stderr
  assert [p.name.split("-")[0] for p in (wd / "unreadable_checkpoints").iterdir()] == ["6"]
  got = tu.leaves(tu.restore_state(wd))
  assert all(np.array_equal(x, y) for x, y in zip(expected, got))

  for step in tu.checkpoint_steps(wd):
    damage(wd, step)
  nothing = tu.run_cli(cli(wd), tu.env())
  assert_one_line(nothing, "normjax.train: no checkpoint in")
  assert sorted(p.name.split("-")[0] for p in (wd / "unreadable_checkpoints").iterdir()) == [
    "2",
    "4",
    "6",
    "6",
  ]


SLOW_FINALIZE = """
import os, sys, time
from orbax.checkpoint._src.path import atomicity
original = atomicity.AtomicRenameTemporaryPath.finalize
async def finalize(self):
  if self.get_final().name == os.environ["SLOW_STEP"]:
    open(os.environ["MARKER"], "w").close()
    time.sleep(600)  # the save of this step is in flight until the test kills the process
  return await original(self)
atomicity.AtomicRenameTemporaryPath.finalize = finalize
from normjax import train
train.main()
"""


def test_kill_during_an_inflight_save_resumes_bitwise(tmp_path):
  reference = tu.run_cli(cli(tmp_path / "ref"), tu.env())
  assert reference.returncode == 0, reference.stderr[-3000:]
  expected = tu.leaves(tu.restore_state(tmp_path / "ref"))
  wd, marker = tmp_path / "w", tmp_path / "finalizing"
  script = tmp_path / "slow_train.py"
  script.write_text(SLOW_FINALIZE)
  args = [sys.executable, str(script), *cli(wd)[3:]]
  proc = subprocess.Popen(
    args,
    env=tu.env(SLOW_STEP="4", MARKER=str(marker)),
    cwd=tu.ROOT,
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
  )
  try:
    for _ in range(3000):
      if marker.exists() or proc.poll() is not None:
        break
      subprocess.run(["sleep", "0.1"])
    assert marker.exists(), proc.communicate()[0][-3000:]
  finally:
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
  # step 4 was fully written but never finalized: it must not count as a checkpoint
  assert tu.checkpoint_steps(wd) == [2]
  resumed = tu.run_cli(cli(wd), tu.env())
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "at step 2" in resumed.stdout
  got = tu.leaves(tu.restore_state(wd))
  assert all(np.array_equal(x, y) for x, y in zip(expected, got))


def test_one_process_per_workdir(tmp_path):
  wd = tmp_path / "w"
  with workdirs.lock(str(wd)):
    with pytest.raises(workdirs.WorkdirError, match=rf"in use by pid {os.getpid()} on "):
      train.train_and_evaluate(tiny(2), str(wd))
  # a holder that died leaves no stale lock (the kernel drops a dead process's flock)
  code = (
    f"import os, normjax.workdir as w; w.lock({str(wd)!r}).__enter__(); os.kill(os.getpid(), 9)"
  )
  assert subprocess.run([sys.executable, "-c", code], env=tu.env()).returncode == -9
  assert "pid" in (wd / workdirs.LOCK_FILE).read_text()
  train.train_and_evaluate(tiny(2), str(wd))
  assert tu.checkpoint_steps(wd) == [2]


def test_failed_save_stops_the_run_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
  from orbax.checkpoint._src.path import atomicity

  original = atomicity.AtomicRenameTemporaryPath.finalize

  async def disk_full(self):
    if self.get_final().name == "4":
      raise OSError(28, "No space left on device")
    return await original(self)

  wd = tmp_path / "w"
  monkeypatch.setattr(atomicity.AtomicRenameTemporaryPath, "finalize", disk_full)
  with pytest.raises(
    checkpoint.CheckpointError,
    match=r"could not write a checkpoint .*No space left.*latest: step 2",
  ):
    train.train_and_evaluate(tiny(), str(wd))
  assert json.loads((wd / "status.json").read_text())["status"] == "failed"
  assert tu.checkpoint_steps(wd) == [2]
  two = tu.restore_state(wd)
  assert two["step"] == 2
  monkeypatch.setattr(atomicity.AtomicRenameTemporaryPath, "finalize", original)
  train.train_and_evaluate(tiny(), str(wd))  # the next start resumes from the good one
  assert tu.checkpoint_steps(wd) == [2, 4, 6]
  assert json.loads((wd / "status.json").read_text())["status"] == "finished"


@pytest.mark.parametrize(
  "args,starts",
  [
    (
      ["-m", "normjax.train", "--config", "configs/vit_layernorm.py", "--config.model.width=0"],
      "normjax.train: config key model.width=0: must be an integer >= 1",
    ),
    (["-m", "normjax.tools.ln_removal", "/nonexistent/run"], "normjax.tools.ln_removal: "),
    (
      ["-m", "normjax.tools.alpha_bn_eval", "--workdir", "/nonexistent/run"],
      "normjax.tools.alpha_bn_eval: --workdir '/nonexistent/run': no config.json",
    ),
    (
      ["-m", "normjax.tools.alpha_bn_eval", "--workdir", "/nonexistent/run", "--severities", "0"],
      "normjax.tools.alpha_bn_eval: --severities=0: each must be one of 1, 2, 3, 4, 5",
    ),
    (
      [
        "-m",
        "normjax.sweep",
        "--config",
        "configs/sweeps/gpt2_lr.py",
        "--index",
        "99",
        "--workdir",
        "/tmp/normjax-test-none",
      ],
      "normjax.tools.sweep: --index 99 out of range",
    ),
  ],
)
def test_commands_fail_with_one_line(args, starts, tmp_path):
  result = tu.run_cli([sys.executable, *args], tu.env())
  assert_one_line(result, starts)
  verbose = tu.run_cli([sys.executable, *args], tu.env(NORMJAX_VERBOSE="1"))
  assert verbose.returncode != 0 and "Traceback" in verbose.stderr
