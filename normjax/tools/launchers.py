"""Where a sweep's runs execute: here one by one, here N at a time, or on a SLURM cluster.

Every launcher takes the same list of ``Run``s (index, name, training command, run dir),
writes ``status.json`` = ``queued`` for each before it starts, and leaves the rest of the
bookkeeping to the trainer, which writes ``running`` / ``finished`` / ``diverged`` /
``failed`` there itself (``normjax.metrics_io``); a process that dies before it can say
why is recorded as ``failed`` with its exit code (``record_exit``).

* ``sequential``: one run after another in this process's machine (the default).
* ``local`` with ``parallel=N``: up to N runs at once, each pinned to its own devices:
  ``gpus_per_run=K`` gives run slot s the GPUs ``s*K .. s*K+K-1`` through
  ``CUDA_VISIBLE_DEVICES``; on a CPU (K = 0) each run is its own process with its own
  XLA CPU device. (TPU VMs: one run per host; use ``--mode emit`` and one command per host.)
* ``slurm``: one SLURM array job through ``submitit`` (partition, time, GPUs per run,
  array parallelism); ``cluster='local'`` runs the same array through submitit's local
  executor (for testing the path without a cluster). ``wait=False`` returns after
  submission: ``--mode summarize`` reads the results later.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
from concurrent import futures

from normjax.metrics_io import STATUS_FILE, write_status


@dataclasses.dataclass(frozen=True)
class Run:
  index: int
  name: str
  command: tuple[str, ...]
  rundir: str


def read_status(rundir: str) -> dict:
  path = os.path.join(rundir, STATUS_FILE)
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)


def record_exit(rundir: str, returncode: int):
  """After a run's process ended: a non-zero exit the trainer could not describe (killed,
  an import error) becomes ``failed`` with the exit code and the log's last line."""
  if returncode == 0 or read_status(rundir).get("status") in ("diverged", "failed"):
    return
  log = os.path.join(rundir, "train.log")
  lines = open(log).read()[-2000:].strip().splitlines() if os.path.exists(log) else []
  write_status(rundir, "failed", returncode=returncode, message=lines[-1] if lines else "")


def execute(run: Run, env: dict | None = None) -> int:
  """Runs one training command here, its output appended to ``<rundir>/train.log``."""
  os.makedirs(run.rundir, exist_ok=True)
  with open(os.path.join(run.rundir, "train.log"), "a") as log:
    code = subprocess.run(
      list(run.command), stdout=log, stderr=subprocess.STDOUT, env=env
    ).returncode
  record_exit(run.rundir, code)
  return code


def run_local(runs: list[Run], *, parallel: int = 1, gpus_per_run: int = 0, report=print):
  """Runs ``runs`` here, up to ``parallel`` at a time, each slot on its own devices."""
  if parallel < 1 or gpus_per_run < 0:
    raise ValueError(f"--parallel={parallel} must be >= 1 and --gpus_per_run={gpus_per_run} >= 0")
  for run in runs:
    write_status(run.rundir, "queued")
  slots = list(range(parallel))

  def launch(run: Run):
    slot = slots.pop()
    report(run, "running")
    env = dict(os.environ)
    if gpus_per_run:
      env["CUDA_VISIBLE_DEVICES"] = ",".join(
        str(slot * gpus_per_run + g) for g in range(gpus_per_run)
      )
    try:
      return run, execute(run, env)
    finally:
      slots.append(slot)

  with futures.ThreadPoolExecutor(parallel) as pool:
    for done in futures.as_completed([pool.submit(launch, r) for r in runs]):
      run, _ = done.result()
      report(run, "ended")


def _submitit_entry(command: tuple[str, ...], rundir: str) -> int:
  """What one array task runs on its node (a module-level function: submitit pickles it)."""
  return execute(Run(-1, os.path.basename(rundir), command, rundir))


def run_slurm(
  runs: list[Run],
  folder: str,
  *,
  cluster: str = "slurm",
  partition: str | None = None,
  time_min: int = 60,
  gpus_per_run: int = 0,
  cpus_per_run: int | None = None,
  parallel: int | None = None,
  wait: bool = True,
  report=print,
) -> list:
  """Submits ``runs`` as one array job through ``submitit``; waits for it if ``wait``."""
  try:
    import submitit
  except ImportError:
    raise ValueError("--launcher=slurm needs submitit: pip install submitit") from None
  executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
  params = {"timeout_min": time_min, "name": "normjax-sweep"}
  if cluster == "slurm":
    params.update(
      slurm_partition=partition,
      slurm_array_parallelism=parallel or len(runs),
      slurm_gpus_per_task=gpus_per_run or None,
      slurm_cpus_per_task=cpus_per_run,
    )
  executor.update_parameters(**{k: v for k, v in params.items() if v is not None})
  for run in runs:
    write_status(run.rundir, "queued")
  jobs = executor.map_array(_submitit_entry, [r.command for r in runs], [r.rundir for r in runs])
  for run, job in zip(runs, jobs):
    write_status(run.rundir, "queued", job_id=str(job.job_id))
    report(run, f"queued as job {job.job_id}")
  if wait:
    for run, job in zip(runs, jobs):
      try:
        job.result()
      except Exception as e:  # the task itself died (node failure, timeout)
        write_status(run.rundir, "failed", job_id=str(job.job_id), message=str(e)[-500:])
      report(run, "ended")
  return jobs


__all__ = ["Run", "run_local", "run_slurm", "execute", "record_exit", "read_status"]
