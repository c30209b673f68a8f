"""docs/configuration.md documents every field of base_config(), from the source comments."""
import os
import re

from cmdp.training import config_reference
from cmdp.training.config import base_config
from tests.training.tiny import _ROOT

PAGE = os.path.join(_ROOT, "docs", "configuration.md")


def _flatten(d: dict, prefix: str = "") -> dict:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict) and v:
      out.update(_flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def _rows() -> dict[str, tuple[str, str]]:
  """`{field: (default cell, meaning cell)}` of the page's field table."""
  rows = {}
  for line in open(PAGE).read().splitlines():
    m = re.match(r"\| `([\w.@]+)` \| `(.*)` \| (.*) \|$", line)
    if m:
      rows[m.group(1)] = (m.group(2), m.group(3).strip())
  return rows


def test_every_field_is_documented():
  """One row per leaf field, each with a meaning; a field added without a comment, or a
  table not regenerated (`python -m cmdp.training.config_reference`), fails here."""
  fields = _flatten(base_config().to_dict())
  rows = _rows()
  missing = sorted(set(fields) - set(rows))
  assert not missing, f"fields without a row in docs/configuration.md: {missing}"
  assert not sorted(set(rows) - set(fields)), "rows for fields that no longer exist"
  undocumented = sorted(f for f, (_, meaning) in rows.items() if not meaning)
  assert not undocumented, (f"fields without a source comment: {undocumented}; comment them "
                            "where they are defined and run python -m "
                            "cmdp.training.config_reference")
  for field, value in fields.items():
    shown = rows[field][0].replace("\\|", "|")
    assert shown == repr(value), (field, shown, value)
  page = open(PAGE).read()
  assert config_reference.render(page) == page, "stale: run python -m cmdp.training.config_reference"


def test_meanings_are_the_comments_in_the_source():
  rows = _rows()
  source = open(os.path.join(_ROOT, "cmdp", "training", "config.py")).read()
  # A trailing comment: the rollout's `temperature=1.0,  # ...` line.
  trailing = re.search(r"\n\s+temperature=1\.0,\s+#\s*(.*)\n", source).group(1)
  assert rows["rollout.temperature"][1] == trailing
  # A block comment above the field, joined into one line.
  assert rows["student.cut_layers"][1].startswith("Teacher layers kept by a student cut")
  # ObjectiveConfig (cmdp/objectives/config.py) gives the loss fields; model_fields the
  # random-init fields of both models; the same text for both.
  assert rows["loss.budget"][1].startswith("d: threshold of the constraint. Units: nats")
  assert rows["teacher.random_init.hidden_size"][1] == rows[
      "student.random_init.hidden_size"][1] == "residual width"
