"""A workdir is a record: one run owns it, and what produced each checkpoint stays known.

* **One run per workdir.** ``lock(workdir)`` holds an exclusive ``fcntl.flock`` on
  ``workdir/.lock`` for the run's lifetime; the file names the holder (pid, host, start
  time). The operating system drops the lock when the holder exits or dies, so a lock is
  never stale. A second start fails with a message naming the holder. Multi-host runs
  share one workdir: only process 0 takes the lock.
* **Config drift.** ``config.json`` is the resolved config the run's checkpoints were
  written with; it is never overwritten while the run has checkpoints. A restart compares
  the new resolved config with it: keys in ``RESUMABLE_KEYS`` (duration, cadences, keep
  count, data_dir) may change and are recorded; any other difference stops the run before
  anything is written, naming each key with its old and new value. ``--restart`` moves
  the old run aside (``<workdir>.replaced-<UTC time>``) and starts afresh.
* **History.** Every start writes ``configs/<n>-<UTC time>-step<k>.json`` (the resolved
  config it ran with, k = the step it started from), so an amendment is never lost.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import socket

from normjax.config_schema import flatten

RESUMABLE_KEYS = (
  "total_steps",
  "total_epochs",
  "eval_every",
  "log_every",
  "checkpoint_every",
  "keep_checkpoints",
  "data.data_dir",
  "profile.start_step",
  "profile.num_steps",
)
LOCK_FILE = ".lock"
# Keys added to the trainer after runs were started: absent in an old config.json means this.
ADDED_DEFAULTS = {
  "grad_accum_steps": 1,
  "profile.start_step": 1,
  "profile.num_steps": 0,
  "model.remat": "none",
  "model.scan_layers": False,
}


class WorkdirError(ValueError):
  """A start that would damage or contend for a run's workdir."""


def _now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def as_json(config) -> dict:
  """The config as the JSON ``config.json`` holds (tuples as lists, placeholders as None)."""
  return json.loads(config.to_json_best_effort(sort_keys=True))


def has_checkpoints(workdir: str) -> bool:
  path = os.path.join(workdir, "checkpoints")
  return os.path.isdir(path) and any(name.isdigit() for name in os.listdir(path))


def drift(old: dict, new: dict) -> tuple[dict, dict]:
  """``(resumable, refused)``: the differing keys, each ``{key: (old, new)}``."""
  # defaults on both sides: a model without such a key (no ``remat``) lacks it in both
  a, b = {**ADDED_DEFAULTS, **flatten(old)}, {**ADDED_DEFAULTS, **flatten(new)}
  changed = {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}
  resumable = {k: v for k, v in changed.items() if k in RESUMABLE_KEYS}
  return resumable, {k: v for k, v in changed.items() if k not in RESUMABLE_KEYS}


@contextlib.contextmanager
def lock(workdir: str):
  """Holds the workdir's lock (see the module docstring) for the ``with`` block."""
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, LOCK_FILE)
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = os.read(fd, 4096).decode(errors="replace").strip() or "an unknown process"
      raise WorkdirError(
        f"workdir {workdir} is in use by {holder}; wait for that run, stop "
        f"it, or choose another --workdir"
      ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {_now()}\n".encode(), 0)
    yield
  finally:
    os.close(fd)  # releases the flock


def prepare(workdir: str, config, *, restart: bool = False) -> dict:
  """Checks ``config`` against the run already in ``workdir`` before anything is written.

  Returns the resumable differences ``{key: (old, new)}`` (empty for a fresh run). Raises
  ``WorkdirError`` for any other difference unless ``restart``, which moves the old run
  aside first. Call it holding nothing; ``start`` records the start afterwards.
  """
  path = os.path.join(workdir, "config.json")
  if not (os.path.exists(path) and has_checkpoints(workdir)):
    return {}
  with open(path) as f:
    old = json.load(f)
  resumable, refused = drift(old, as_json(config))
  if not refused:
    return resumable
  if restart:
    aside = f"{os.path.abspath(workdir).rstrip(os.sep)}.replaced-{_now()}"
    with lock(workdir):  # never move a live run
      os.rename(workdir, aside)
    print(f"moved the previous run aside to {aside}; starting afresh in {workdir}", flush=True)
    return {}
  changes = ", ".join(f"{k}: {o!r} -> {n!r}" for k, (o, n) in refused.items())
  raise WorkdirError(
    f"the config differs from the one this run's checkpoints were written with ({path}) in "
    f"{changes}; only {', '.join(RESUMABLE_KEYS)} may change on resume. Use a new --workdir, "
    f"or pass --restart to move this run aside and start afresh here"
  )


def record_start(workdir: str, config, step: int, resumed: dict) -> str:
  """Writes ``config.json`` (first start only) and this start's copy under ``configs/``."""
  resolved = as_json(config)
  path = os.path.join(workdir, "config.json")
  if not has_checkpoints(workdir) or not os.path.exists(path):
    with open(path, "w") as f:
      json.dump(resolved, f, indent=2, sort_keys=True)
  history = os.path.join(workdir, "configs")
  os.makedirs(history, exist_ok=True)
  n = sum(1 for name in os.listdir(history) if name.endswith(".json"))
  copy = os.path.join(history, f"{n:03d}-{_now()}-step{step}.json")
  with open(copy, "w") as f:
    json.dump(
      {
        "config": resolved,
        "start_step": step,
        "amended": {k: {"old": o, "new": v} for k, (o, v) in resumed.items()},
      },
      f,
      indent=2,
      sort_keys=True,
    )
  if resumed:
    print(
      "resuming with amended " + ", ".join(f"{k}: {o!r} -> {v!r}" for k, (o, v) in resumed.items()),
      flush=True,
    )
  return copy
