"""normjax.sweep: grid expansion, commands, statuses, the summary, and a real two-run sweep."""

import json
import subprocess
import sys

import ml_collections
import pytest

from normjax.tools import sweep
from tests import trainer_utils as tu


def sweep_config(**kwargs):
  c = ml_collections.ConfigDict(
    {"base": "../gpt2_adamw.py", "base_arg": "", "fixed": {}, "metric": "eval_loss", "goal": "min"}
  )
  c.update(kwargs)
  return c


def test_expand_is_the_ordered_cartesian_product_of_nested_keys():
  c = sweep_config(
    grid={"optimizer": {"learning_rate": [1e-3, 3e-3], "b2": [0.95]}, "seed": [0, 1]}
  )
  runs = sweep.expand(c)
  assert runs == [
    {"optimizer.learning_rate": lr, "optimizer.b2": 0.95, "seed": s}
    for lr in (1e-3, 3e-3)
    for s in (0, 1)
  ]
  assert sweep.run_name(runs[1]) == "b2=0.95,learning_rate=0.001,seed=1"  # sorted keys
  clash = {"model.width": 8, "optimizer.groups.muon.width": 2}
  assert sweep.run_name(clash) == "model.width=8,optimizer.groups.muon.width=2"
  with pytest.raises(ValueError, match="non-empty list"):
    sweep.expand(sweep_config(grid={"optimizer": {"learning_rate": 1e-3}}))


def test_command_formats_overrides_for_config_flags():
  c = sweep_config(
    base_arg="data=pystdlib",
    fixed={"model": {"stage_sizes": (1, 2)}},
    grid={"optimizer": {"learning_rate": [0.5]}},
  )
  cmd = sweep.command(
    c,
    str(tu.ROOT / "configs" / "sweeps" / "x.py"),
    {"optimizer.learning_rate": 0.5, "data.name": "digits"},
    "/w/r",
  )
  assert cmd[1:4] == ["-m", "normjax.train", "--config"]
  assert cmd[4].endswith("configs/gpt2_adamw.py:data=pystdlib")
  assert cmd[5:] == [
    "--workdir",
    "/w/r",
    "--config.model.stage_sizes=(1,2,)",
    "--config.optimizer.learning_rate=0.5",
    "--config.data.name='digits'",
  ]
  with pytest.raises(ValueError, match="no such file"):
    sweep.command(
      sweep_config(base="../nope.py"), str(tu.ROOT / "configs" / "sweeps" / "x.py"), {}, "/w"
    )


def test_summary_averages_seeds_and_marks_the_best(tmp_path):
  c = sweep_config(grid={"optimizer": {"learning_rate": [1e-3, 3e-3, 1e-2]}, "seed": [0, 1]})
  runs = sweep.expand(c)
  values = {(1e-3, 0): 2.0, (1e-3, 1): 2.2, (3e-3, 0): 1.5, (3e-3, 1): 1.7, (1e-2, 0): 1.0}
  results = []
  for run in runs:
    v = values.get((run["optimizer.learning_rate"], run["seed"]))
    results.append(
      {"status": "done", "value": v} if v is not None else {"status": "diverged", "value": None}
    )
  s = sweep.summarize(c, runs, results)
  rows = {r["optimizer.learning_rate"]: r for r in s["rows"]}
  assert rows[1e-3]["mean"] == pytest.approx(2.1) and rows[1e-3]["std"] == pytest.approx(
    0.1414, abs=1e-4
  )
  # a setting with a diverged seed is never "best", even with the lowest mean
  assert rows[1e-2]["status"] == "diverged,done" and s["best"]["optimizer.learning_rate"] == 3e-3
  assert "**1.6000 ± 0.1414** (best)" in s["table"]
  assert sweep.plot(s, str(tmp_path / "p.png")) and (tmp_path / "p.png").stat().st_size > 0
  maximise = sweep.summarize(sweep_config(grid=c.grid, goal="max"), runs, results)
  assert maximise["best"]["optimizer.learning_rate"] == 1e-3


def test_read_result_statuses(tmp_path):
  assert sweep.read_result(str(tmp_path), "eval_loss")["status"] == "pending"
  (tmp_path / sweep.STATUS_FILE).write_text(json.dumps({"status": "diverged", "message": "m"}))
  assert sweep.read_result(str(tmp_path), "eval_loss")["status"] == "diverged"
  (tmp_path / "final.json").write_text(json.dumps({"step": 3, "eval_loss": 1.25}))
  assert sweep.read_result(str(tmp_path), "eval_loss") == {
    "status": "done",
    "value": 1.25,
    "step": 3,
  }
  with pytest.raises(ValueError, match="eval_accuracy.*eval_loss"):
    sweep.read_result(str(tmp_path), "eval_accuracy")


TINY_SWEEP = """
import ml_collections
def get_config(arg=None):
  c = ml_collections.ConfigDict()
  c.base = {base!r}
  c.base_arg = ""
  c.grid = {{"optimizer": {{"learning_rate": [1e-3, 1e30]}}}}
  c.fixed = {fixed!r}
  c.metric = "eval_loss"
  c.goal = "min"
  return c
"""


@pytest.mark.slow
def test_two_run_sweep_end_to_end(tmp_path):
  """One run finishes, one diverges (lr 1e30) without stopping the sweep; a second call
  skips both; emit prints the same commands."""
  args, workdir = tiny_sweep_args(tmp_path)
  args[2] = "normjax.sweep"  # the old path: it still works
  out = subprocess.run(args, env=tu.env(), capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "done: eval_loss=" in out.stdout and "diverged: normjax.train: non-finite" in out.stdout
  summary = json.loads((workdir / "summary.json").read_text())
  assert summary["best"]["optimizer.learning_rate"] == 1e-3
  assert [r["status"] for r in summary["rows"]] == ["done", "diverged"]
  assert (workdir / "summary.png").exists() and "(best)" in (workdir / "summary.md").read_text()
  final = json.loads((workdir / "learning_rate=0.001" / "final.json").read_text())
  assert final["step"] == 3 and final["eval_loss"] == summary["rows"][0]["mean"]

  again = subprocess.run(args, env=tu.env(), capture_output=True, text=True, timeout=600)
  assert again.stdout.count("already") == 2, again.stdout
  emitted = subprocess.run(
    args + ["--mode", "emit"], env=tu.env(), capture_output=True, text=True, timeout=600
  ).stdout.splitlines()
  assert len(emitted) == 2 and all(
    l.startswith("python -m normjax.train --config ") for l in emitted
  )
  assert emitted[1].endswith("--config.optimizer.learning_rate=1e+30")


def tiny_sweep_args(tmp_path, *extra):
  fixed = {}
  for key, value in tu.overrides("gpt2", 3).items():
    *parents, leaf = key.split(".")
    node = fixed
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = value
  config = tmp_path / "tiny_sweep.py"
  config.write_text(TINY_SWEEP.format(base=str(tu.ROOT / "configs" / "gpt2_adamw.py"), fixed=fixed))
  workdir = tmp_path / "w"
  args = [
    sys.executable,
    "-m",
    "normjax.tools.sweep",
    "--config",
    str(config),
    "--workdir",
    str(workdir),
    *extra,
  ]
  return args, workdir


@pytest.mark.slow
@pytest.mark.parametrize(
  "launcher",
  [["--launcher", "local", "--parallel", "2"], ["--launcher", "slurm", "--slurm_cluster", "local"]],
)
def test_parallel_and_submitit_sweeps_finish_and_summarise(launcher, tmp_path):
  if launcher[1] == "slurm":
    pytest.importorskip("submitit")
  args, workdir = tiny_sweep_args(tmp_path, *launcher)
  out = subprocess.run(args, env=tu.env(), capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  summary = json.loads((workdir / "summary.json").read_text())
  assert [r["status"] for r in summary["rows"]] == ["done", "diverged"]
  statuses = {
    p.parent.name: json.loads(p.read_text())["status"] for p in workdir.glob("*/status.json")
  }
  assert statuses == {"learning_rate=0.001": "finished", "learning_rate=1e+30": "diverged"}
  assert "diverged: normjax.train: non-finite" in out.stdout
  if launcher[1] == "slurm":
    assert list((workdir / "slurm").glob("*_log.out"))  # submitit's own job logs


def test_runs_are_queued_before_they_start_and_a_killed_run_is_failed(tmp_path):
  from normjax.tools import launchers

  seen = []
  runs = [
    launchers.Run(i, f"r{i}", (sys.executable, "-c", code), str(tmp_path / f"r{i}"))
    for i, code in enumerate(["import os; os.kill(os.getpid(), 9)", "print('ok')"])
  ]

  def report(run, what):
    seen.append((run.name, what, launchers.read_status(run.rundir).get("status")))

  launchers.run_local(runs, parallel=1, report=report)
  assert ("r1", "running", "queued") in seen  # queued until its slot came
  assert launchers.read_status(runs[0].rundir)["status"] == "failed"
  assert launchers.read_status(runs[0].rundir)["returncode"] == -9
  assert launchers.read_status(runs[1].rundir)["status"] == "queued"  # no trainer: untouched
  with pytest.raises(ValueError, match="--parallel=0"):
    launchers.run_local(runs, parallel=0)
