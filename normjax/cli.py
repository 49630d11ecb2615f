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
