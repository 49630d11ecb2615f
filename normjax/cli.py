"""How every normjax command fails: one line for a person, the traceback on request.

``normjax.train`` and each ``normjax.tools`` command run their body through ``guarded``:
any exception ends the process with exit status 1 and one line on stderr,
``normjax.<command>: <what> (<where>)``, where ``<where>`` is the innermost frame in
normjax's own code (file:line) or, for an error raised elsewhere, its type. The process
then exits at once, so no orbax, grain or asyncio thread prints after that line (their
work was already waited for or abandoned by the command's own clean-up). ``--verbose``
or ``NORMJAX_VERBOSE=1`` re-raises instead: the full traceback, for bug reports.
"""

from __future__ import annotations

import os
import sys
import traceback
from typing import Callable

_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def one_line(command: str, error: BaseException) -> str:
  """``<command>: <what> (<where>)`` for ``error``."""
  frames = [
    f
    for f in traceback.extract_tb(error.__traceback__)
    if os.path.abspath(f.filename).startswith(os.path.join(_PACKAGE_ROOT, "normjax"))
  ]
  where = (
    f"{os.path.relpath(frames[-1].filename, _PACKAGE_ROOT)}:{frames[-1].lineno}"
    if frames
    else type(error).__name__
  )
  what = " ".join(str(error).split()) or type(error).__name__
  return f"{command}: {what} ({where})"


def verbose(flag: bool = False) -> bool:
  """Full tracebacks instead of one line: ``--verbose`` or ``NORMJAX_VERBOSE=1``."""
  return flag or os.environ.get("NORMJAX_VERBOSE", "") not in ("", "0")


def define_verbose_flag():
  """The ``--verbose`` flag every command shares (defined when the command runs)."""
  from absl import flags

  return flags.DEFINE_bool("verbose", False, "Full tracebacks on errors (also NORMJAX_VERBOSE=1).")


def guarded(command: str, body: Callable[[], object], *, verbose_flag: bool = False):
  """Runs ``body()``; on any exception prints ``one_line`` and exits with status 1."""
  try:
    return body()
  except Exception as e:
    if verbose(verbose_flag):
      raise
    sys.stdout.flush()
    print(one_line(command, e), file=sys.stderr, flush=True)
    os._exit(1)


def mean_and_se(rows: list[dict], keys) -> dict:
  """``{key: {'mean', 'se'}}`` over per-seed ``rows`` (s.e. = sample std / sqrt(n); 0 for n=1)."""
  import numpy as np

  out = {}
  for k in keys:
    values = np.array([r[k] for r in rows], np.float64)
    se = float(values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else 0.0
    out[k] = {"mean": float(values.mean()), "se": se}
  return out


def seeds_command(command: str, run_seeds: Callable, shown: Callable[[dict], list[str]]):
  """``main`` of a ``--config --workdir [--seeds N]`` command (continual, federated,
  plasticity): ``run_seeds(config, workdir, seeds)`` returns a summary of ``mean_and_se``
  entries; the keys ``shown(summary)`` names are printed as ``key mean ± se``. Flags are
  defined when the command runs, so importing its module defines none."""
  from absl import app, flags, logging
  from ml_collections import config_flags

  config_flag = config_flags.DEFINE_config_file("config", None, "Config file [:arg].")
  workdir = flags.DEFINE_string("workdir", None, "Output directory.")
  seeds = flags.DEFINE_integer("seeds", 1, "Runs with seeds config.seed, config.seed + 1, ...")
  verbose_flag = define_verbose_flag()

  def run_command(argv):
    del argv
    if config_flag.value is None or not workdir.value:
      raise app.UsageError("--config and --workdir are required")
    logging.set_verbosity(logging.WARNING)

    def body():
      if seeds.value < 1:
        raise ValueError(f"--seeds={seeds.value}: must be >= 1")
      summary = run_seeds(config_flag.value, workdir.value, seeds.value)
      print(
        " | ".join(f"{k} {summary[k]['mean']:.4f} ± {summary[k]['se']:.4f}" for k in shown(summary))
      )

    guarded(command, body, verbose_flag=verbose_flag.value)

  app.run(run_command)
