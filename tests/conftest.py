"""Test set-up: CPU only, 8 virtual devices for sharding tests, float64 available on request."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in flags:
  os.environ["XLA_FLAGS"] = (flags + " --xla_force_host_platform_device_count=8").strip()

# One persistent XLA compilation cache for the whole test session (the xdist workers and the
# trainer subprocesses inherit the variable): a resumed run, a second process or a second
# test of the same config reuses the compiled step instead of compiling it again. Compiled
# executables are keyed by their HLO and flags, so results are those of a fresh compile.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  import tempfile

  os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE_MADE_HERE = tempfile.mkdtemp(
    prefix="normjax-xla-cache-"
  )
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

_SLOW = os.path.join(os.path.dirname(__file__), "slow_first.txt")


def pytest_collection_modifyitems(session, config, items):
  """Modules holding the slowest tests run first (whole modules, in their own order), so that
  ``-n 2`` does not end with one worker alone on a long test. ``slow_first.txt``: seconds and
  node id per line, from ``pytest --durations=40`` (only the order matters; stale is harmless)."""
  if not os.path.exists(_SLOW):
    return
  weight: dict[str, float] = {}
  with open(_SLOW) as f:
    for line in f:
      seconds, _, nodeid = line.strip().partition(" ")
      module = nodeid.split("::")[0]
      weight[module] = weight.get(module, 0.0) + float(seconds)
  position = {id(item): i for i, item in enumerate(items)}
  items.sort(key=lambda it: (-weight.get(it.nodeid.split("::")[0], 0.0), position[id(it)]))


def pytest_unconfigure(config):
  """The process that made the compilation cache removes it (not the xdist workers)."""
  made = globals().get("_CACHE_MADE_HERE")
  if made and not hasattr(config, "workerinput"):
    import shutil

    shutil.rmtree(made, ignore_errors=True)
