"""Reading raw task records from local files, shared by the GSM8K and MATH loaders.

Every reader yields `(where, record)` pairs: `where` is a location for error messages
(`"path:line"` for jsonl, `"path: row N"` for parquet), `record` the decoded record (a dict
when the file is well formed; the loaders check that).
"""
from __future__ import annotations

import json
from typing import Any, Iterator, Mapping, Sequence

SHOW_CHARS = 120  # how much of an offending record an error message quotes


def shorten(value: Any) -> str:
  """`repr(value)`, cut to `SHOW_CHARS` characters (then ending `...'`), for error messages."""
  text = repr(value)
  return text if len(text) <= SHOW_CHARS else text[:SHOW_CHARS] + "...'"


def jsonl_records(path: str) -> Iterator[tuple[str, Any]]:
  """Yields `("path:line", decoded object)` for each non-blank line of a jsonl file.

  Raises:
    ValueError: naming the file and line and quoting it, for a line that is not JSON.
  """
  with open(path, encoding="utf-8") as f:
    for line_no, line in enumerate(f, start=1):
      if not line.strip():
        continue
      where = f"{path}:{line_no}"
      try:
        yield where, json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{where}: invalid JSON ({e.msg}): {shorten(line.rstrip())}.") from e


def parquet_records(path: str) -> Iterator[tuple[str, dict[str, Any]]]:
  """Yields `("path: row N", row as a dict)` for each row of a parquet file (0-based N)."""
  import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
  for row, record in enumerate(pq.read_table(path).to_pylist()):
    yield f"{path}: row {row}", record


def require_text_fields(record: Any, fields: Sequence[str], where: str) -> None:
  """Checks that `record` is a mapping whose `fields` all hold non-blank strings.

  Args:
    record: the decoded record.
    fields: the required field names, e.g. `("question", "answer")`.
    where: the record's location (file and line, or hub row), put first in the message.

  Raises:
    ValueError: naming `where` and quoting the record, when it is not a mapping, or one of
      `fields` is missing, not a string, or blank.
  """
  if not isinstance(record, Mapping):
    names = [f"'{field}'" for field in fields]
    listed = f"{', '.join(names[:-1])} and {names[-1]}" if len(names) > 1 else names[0]
    raise ValueError(f"{where}: expected a JSON object with {listed}, got {shorten(record)}.")
  for field in fields:
    value = record.get(field)
    if not isinstance(value, str) or not value.strip():
      raise ValueError(f"{where}: field '{field}' is missing or not a non-empty string in "
                       f"{shorten(record)}.")
