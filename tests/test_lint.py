"""The code stays formatted and lint-clean (ruff, configured in pyproject.toml), so no commit
needs to be about line lengths or import order."""

import shutil
import subprocess

import pytest

from tests import trainer_utils as tu

ruff = shutil.which("ruff")


@pytest.mark.skipif(ruff is None, reason="ruff is in the test extra: pip install '.[test]'")
@pytest.mark.parametrize("args", [["check", "."], ["format", "--check", "."]])
def test_ruff(args):
  result = subprocess.run([ruff, *args], cwd=tu.ROOT, capture_output=True, text=True)
  assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
