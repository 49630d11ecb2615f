"""Moved to ``normjax.tools.ln_removal``.

This import and ``python -m normjax.ln_removal`` keep working.
"""

if __name__ == "__main__":
  from normjax.tools import run_moved

  run_moved("normjax.ln_removal", "normjax.tools.ln_removal")
else:
  from normjax.tools.ln_removal import *  # noqa: F401,F403
