"""Moved to ``normjax.tools.sweep``.

This import and ``python -m normjax.sweep`` keep working.
"""

if __name__ == "__main__":
  from normjax.tools import run_moved

  run_moved("normjax.sweep", "normjax.tools.sweep")
else:
  from normjax.tools.sweep import *  # noqa: F401,F403
