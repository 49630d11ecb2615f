"""normjax.tools.report: the experiments index is generated from each folder's summary."""

import json
import math

import pytest

from normjax.tools import report


def _folder(tmp_path, name, summary, files=None):
  d = tmp_path / name
  d.mkdir()
  (d / "README.md").write_text("# x\n")
  (d / "summary.json").write_text(json.dumps(summary))
  for fname, text in (files or {}).items():
    (d / fname).write_text(text)
  return d


def _summary(**kw):
  base = {"paper": "P", "claim": "C", "verdict": "holds", "measured": "m"}
  base.update(kw)
  return base


def test_committed_index_is_up_to_date():
  assert report.main(["--check"]) == 0, "run python -m normjax.tools.report"


def test_seed_value_mean_and_standard_error():
  rows = [{"a": 1, "m": x} for x in (0.5, 0.7, 0.9)] + [{"a": 2, "m": 5.0}]
  se = math.sqrt(sum((x - 0.7) ** 2 for x in (0.5, 0.7, 0.9)) / 2 / 3)
  assert report.seed_value(rows, "m", {"a": 1}, 3) == f"0.700 ± {se:.3f} (n=3)"
  assert report.seed_value(rows, "m", {"a": 2}, 2) == "5.00 (n=1)"


def test_diverged_rows_are_counted_not_averaged():
  rows = [{"m": 1.0}, {"m": 3.0, "diverged_at_step": None}, {"diverged_at_step": 4}]
  rows.append({"m": float("nan")})
  assert report.seed_value(rows, "m", None, 1) == "2.0 ± 1.0 (n=4, 2 diverged)"
  assert report.seed_value(rows[2:], "m", None, 1) == "— (n=2, 2 diverged)"


def test_render_fills_values_from_result_files_and_orders(tmp_path):
  rows = "\n".join(json.dumps({"arm": "x", "acc": v}) for v in (0.25, 0.75))
  _folder(
    tmp_path,
    "b_second",
    _summary(
      measured="acc {x}, lr {lr}",
      order=2,
      values={
        "x": {"file": "r.jsonl", "match": {"arm": "x"}, "metric": "acc", "digits": 2},
        "lr": {"file": "best.json", "path": ["adamw", "lr"], "digits": 3},
      },
    ),
    {"r.jsonl": rows, "best.json": json.dumps({"adamw": {"lr": 0.001}})},
  )
  _folder(tmp_path, "a_first", _summary(order=1, verdict="partly", claim="a | b"))
  text = report.render(str(tmp_path))
  table = [line for line in text.splitlines() if line.startswith("| [")]
  assert table[0] == "| [a_first](a_first/README.md) | P | a \\| b | m | partly |"
  assert (
    table[1]
    == "| [b_second](b_second/README.md) | P | C | acc 0.50 ± 0.25 (n=2), lr 0.001 | holds |"
  )


@pytest.mark.parametrize(
  "summary, files, message",
  [
    (_summary(verdict="maybe"), {}, "verdict 'maybe' is not one of"),
    (_summary(measured="{x}"), {}, "measured names 'x'"),
    (_summary(values={"x": {"file": "no.jsonl", "metric": "m"}}), {}, "no.jsonl does not exist"),
    (
      _summary(values={"x": {"file": "r.jsonl", "metric": "m", "match": {"a": 9}}}),
      {"r.jsonl": json.dumps({"a": 1, "m": 1.0})},
      "no row matches",
    ),
    ({"paper": "P"}, {}, "missing claim, verdict, measured"),
  ],
)
def test_bad_summaries_fail_naming_the_folder(tmp_path, summary, files, message):
  _folder(tmp_path, "bad", summary, files)
  with pytest.raises(report.ReportError, match="experiments/bad") as e:
    report.render(str(tmp_path))
  assert message in str(e.value)


def test_folder_without_summary_is_an_error(tmp_path):
  (tmp_path / "lonely").mkdir()
  with pytest.raises(report.ReportError, match="experiments/lonely: no summary.json"):
    report.render(str(tmp_path))
