"""Moved to ``normjax.tools.alpha_bn_eval``.

This import and ``python -m normjax.alpha_bn_eval`` keep working.
"""

if __name__ == "__main__":
  from normjax.tools import run_moved

  run_moved("normjax.alpha_bn_eval", "normjax.tools.alpha_bn_eval")
else:
  from normjax.tools.alpha_bn_eval import *  # noqa: F401,F403
