"""Every key of every config refuses a wrong type and an out-of-range value with one line that
names the key (normjax.config_schema), before anything compiles."""

import copy
from pathlib import Path

import jax
import ml_collections
import pytest

from normjax import run
from normjax.config_schema import Rule, flatten, rule_for
from tests import trainer_utils as tu

CONFIGS = sorted(p.stem for p in (tu.ROOT / "configs").glob("*.py"))
# the data options, checked by normjax.data (set each to a wrong type)
DATA_BAD = {
  "seq_len": [0, "x"],
  "eval_windows": [0, 1.5],
  "hole_size": [0, "x"],
  "regularization": [0, "x"],
  "spectral_power": [0, "x"],
  "classes": [(), "x", (1, 1)],
  "name": [3, ""],
  "path": [],
  "data_dir": [],
}


def with_value(tree: dict, key: str, value) -> ml_collections.ConfigDict:
  tree = copy.deepcopy(tree)
  *parents, leaf = key.split(".")
  node = tree
  for p in parents:
    node = node[p]
  node[leaf] = value
  return ml_collections.ConfigDict(tree)  # built anew: no type-safe assignment in the way


def refusal(config) -> str:
  with pytest.raises((ValueError, KeyError)) as info:
    run.build(config)
  return str(info.value).strip("'\"")


@pytest.mark.parametrize("name", CONFIGS)
def test_every_key_refuses_a_wrong_type_and_range(name, monkeypatch):
  config = tu.load_config(name)
  monkeypatch.setattr(jax, "jit", lambda *a, **k: pytest.fail("compiled before checking"))
  tree = config.to_dict()
  for key, value in flatten(tree).items():
    rule = rule_for(key)
    assert rule is not None, (
      f"configs/{name}.py: config key {key} has no rule in "
      f"normjax.config_schema (add one, or list it in FREE with why)"
    )
    if isinstance(rule, Rule):
      assert rule.ok(value), f"{name}: its own {key}={value!r} breaks its rule"
      bad_values = rule.bad_values()
    else:  # FREE: data options are checked by normjax.data
      bad_values = DATA_BAD.get(key.split(".")[-1], []) if key.startswith("data.") else []
    for bad in bad_values:
      message = refusal(with_value(tree, key, bad))
      assert "\n" not in message, message
      assert f"config key {key}=" in message or f"config key {key.rsplit('.', 1)[0]}=" in (
        message
      ), f"{name}: {key}={bad!r} -> {message}"


def test_schema_rules_refuse_what_they_say():
  count = Rule("int", low=1)
  assert count.ok(3) and not count.ok(0) and not count.ok(True) and not count.ok(2.0)
  frac = Rule("float", low=0, high=1)
  assert frac.ok(0) and frac.ok(1.0) and not frac.ok(1.5) and not frac.ok(float("nan"))
  mesh = Rule("int", low=1, also=(-1,))
  assert mesh.ok(-1) and not mesh.ok(0) and 0 in mesh.bad_values()
  assert Rule("ints", low=1).ok((2, 2)) and not Rule("ints", low=1).ok((2, 0))
  assert rule_for("optimizer.groups.adamw.b1") is rule_for("optimizer.b1")
  assert rule_for("model.nonexistent_key") is None
  assert isinstance(rule_for("init_from.workdir"), str)
  assert Path(__file__).exists()
