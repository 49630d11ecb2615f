"""Where metrics go: JSON lines, TensorBoard events and a console progress bar.

Only process 0 writes (``enabled``). ``metrics.jsonl`` holds one object per logged step,
``{"step": 100, "loss": ..., ...}``; ``tb/`` holds the same scalars as TensorBoard
events; ``config.json`` the resolved config; ``final.json`` the final evaluation (written
once the run has finished); ``status.json`` the run's state as ``{"status": ..., "step":
..., "message": ...}``: ``running``, ``finished``, ``preempted`` (SIGTERM, checkpointed),
``diverged`` (non-finite loss) or ``failed`` (any other error; the message is the one line
the command printed). ``normjax.tools.sweep`` reads ``final.json`` and ``status.json``.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time

import numpy as np
import tqdm

STATUS_FILE = "status.json"


def write_status(workdir: str, status: str, **fields):
  """Writes ``<workdir>/status.json`` atomically (a reader never sees half a file)."""
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, STATUS_FILE)
  with open(path + ".tmp", "w") as f:
    json.dump({"status": status, **fields}, f)
  os.replace(path + ".tmp", path)


class MetricWriter:
  def __init__(self, workdir: str, enabled: bool = True):
    self.enabled = enabled
    self.workdir = workdir
    self._tb = None
    if enabled:
      os.makedirs(workdir, exist_ok=True)
      from tensorboardX import SummaryWriter  # heavy import, process 0 only

      self._tb = SummaryWriter(os.path.join(workdir, "tb"))

  def write_config(self, config):
    if self.enabled:
      with open(os.path.join(self.workdir, "config.json"), "w") as f:
        f.write(config.to_json_best_effort(indent=2, sort_keys=True))

  def write(self, step: int, metrics: dict):
    """One JSON line (a ``None`` value, e.g. ``mfu`` on a CPU, is written as null) and the
    same scalars as TensorBoard events."""
    if not self.enabled:
      return
    row = {
      "step": int(step),
      **{k: None if v is None else float(np.asarray(v)) for k, v in metrics.items()},
    }
    with open(os.path.join(self.workdir, "metrics.jsonl"), "a") as f:
      f.write(json.dumps(row) + "\n")
    for k, v in row.items():
      if k != "step" and v is not None:
        self._tb.add_scalar(k, v, row["step"])

  def write_final(self, step: int, metrics: dict):
    if self.enabled:
      row = {"step": int(step), **{k: float(np.asarray(v)) for k, v in metrics.items()}}
      with open(os.path.join(self.workdir, "final.json"), "w") as f:
        json.dump(row, f, indent=2)

  def set_status(self, status: str, **fields):
    if self.enabled:
      write_status(self.workdir, status, **fields)

  @contextlib.contextmanager
  def status_on_exit(self, diverged: tuple[type, ...] = (), command: str = "normjax.train"):
    """``running`` now; if the block raises, ``diverged`` (an exception of a ``diverged``
    type) or ``failed``, with the one-line message. A block that ends normally sets its own
    final status."""
    self.set_status("running")
    try:
      yield
    except BaseException as e:
      status = "diverged" if isinstance(e, diverged) else "failed"
      self.set_status(status, message=f"{command}: {e}" if str(e) else type(e).__name__)
      raise

  def close(self):
    if self._tb is not None:
      self._tb.close()


class Profile:
  """``config.profile = {'start_step': S, 'num_steps': N}``: a ``jax.profiler`` trace of
  training steps S .. S+N-1 in ``<workdir>/profile`` (TensorBoard's profile plugin opens
  it: ``tensorboard --logdir <workdir>/profile``). ``num_steps=0`` (default) is off."""

  def __init__(self, cfg, workdir: str, enabled: bool = True):
    self.start, self.num = int(cfg.get("start_step", 0)), int(cfg.get("num_steps", 0))
    self.directory = os.path.join(workdir, "profile")
    self.enabled, self.active = enabled and self.num > 0, False

  def before(self, step: int):
    if self.enabled and step == self.start:
      import jax

      jax.profiler.start_trace(self.directory)
      self.active = True

  def after(self, step: int, outputs):
    if self.active and step == self.start + self.num - 1:
      import jax

      jax.block_until_ready(outputs)
      self.stop()

  def stop(self):
    if self.active:
      import jax

      jax.profiler.stop_trace()
      self.active = False
      print(
        f"profile of steps {self.start}-{self.start + self.num - 1} in {self.directory}", flush=True
      )


class Progress:
  """A tqdm bar with loss, examples/s and ETA; plain periodic lines when not a TTY."""

  def __init__(self, total: int, start: int, batch_size: int, enabled: bool = True):
    self.batch_size = batch_size
    self._bar = tqdm.tqdm(
      total=total,
      initial=start,
      disable=not enabled,
      dynamic_ncols=True,
      mininterval=0.5 if sys.stderr.isatty() else 30.0,
      unit="step",
    )
    self._t0, self._step0 = time.perf_counter(), start
    self._last = start

  def update(self, step: int, metrics: dict):
    self._bar.update(step - self._last)
    self._last = step
    self._bar.set_postfix(loss=f"{float(metrics['loss']):.4f}", refresh=False)

  def rates(self) -> dict:
    dt = time.perf_counter() - self._t0
    steps = self._last - self._step0
    self._t0, self._step0 = time.perf_counter(), self._last
    return {"steps_per_sec": steps / dt, "examples_per_sec": steps * self.batch_size / dt}

  def close(self):
    self._bar.close()
