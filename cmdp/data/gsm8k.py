"""GSM8K loader: local jsonl / parquet files, or the `openai/gsm8k` hub dataset.

Each record is `{"question": str, "answer": str}` where the answer is a worked solution with
`<<expr=value>>` calculator annotations and a final line `#### <number>`.
"""
from __future__ import annotations

import glob
import os
import re
from typing import Any

from cmdp import sources
from cmdp.data.example import Example
from cmdp.data.records import jsonl_records, parquet_records, require_text_fields, shorten

HUB_ID = "openai/gsm8k"
_CALCULATOR_RE = re.compile(r"<<[^<>\n]*>>")
_GOLD_RE = re.compile(r"-?\d+(?:\.\d+)?")

def strip_calculator_annotations(solution: str) -> str:
  """Removes GSM8K's `<<48/2=24>>` annotations: `"48/2 = $<<48/2=24>>24"` -> `"48/2 = $24"`."""
  return _CALCULATOR_RE.sub("", solution)


def parse_gsm8k_record(record: Any, where: str, *, strip_calculator: bool = True,
                       uid: str = "") -> Example:
  """Turns one `{"question", "answer"}` record into an `Example`.

  Args:
    record: the decoded record.
    where: "file:line" used in error messages.
    strip_calculator: remove `<<...>>` annotations from the solution text.
    uid: the example's uid.

  Raises:
    ValueError: naming `where` and quoting the record, when a field is missing or not a
      string, or the answer has no `#### <number>` line.
  """
  require_text_fields(record, ("question", "answer"), where)
  solution = record["answer"]
  if "####" not in solution:
    raise ValueError(f"{where}: field 'answer' has no final '#### <number>' line: "
                     f"{shorten(solution)}.")
  gold = solution.rsplit("####", 1)[1].strip().replace(",", "")
  if not _GOLD_RE.fullmatch(gold):
    raise ValueError(f"{where}: the '####' line of field 'answer' is not a number: "
                     f"{shorten(gold)}.")
  if strip_calculator:
    solution = strip_calculator_annotations(solution)
  return Example(uid=uid, question=record["question"].strip(), answer=gold,
                 solution=solution.strip(), source=sources.GSM8K)


def _resolve_files(path: str, split: str) -> list[str]:
  if os.path.isfile(path):
    return [path]
  jsonl = os.path.join(path, f"{split}.jsonl")
  if os.path.isfile(jsonl):
    return [jsonl]
  parquet = sorted(glob.glob(os.path.join(glob.escape(path), f"{split}*.parquet")))
  if parquet:
    return parquet
  listing = sorted(os.listdir(path))[:20]
  raise FileNotFoundError(
      f"load_gsm8k: no '{split}.jsonl' or '{split}*.parquet' in directory {path!r} "
      f"(it holds {listing}); pass the directory holding the split files, or a file path.")


def _load_hub(hub_id: str, split: str) -> list[dict[str, Any]]:
  try:
    import datasets  # pylint: disable=g-import-not-at-top
    rows = datasets.load_dataset(hub_id, "main", split=split)
  except Exception as e:  # pylint: disable=broad-except
    raise RuntimeError(
        f"load_gsm8k: could not load {hub_id!r} split {split!r} from the Hugging Face hub "
        f"({type(e).__name__}: {str(e)[:300]}); no local path of that name exists either. "
        "Without network access, pass a local directory holding train.jsonl / test.jsonl "
        "(or *.parquet) instead.") from e
  return list(rows)


def load_gsm8k(path_or_id: str, split: str = "train", *,
               strip_calculator: bool = True) -> list[Example]:
  """Loads one GSM8K split.

  Args:
    path_or_id: a directory holding `{split}.jsonl` or `{split}*.parquet` (e.g.
      `/work/shared/data/gsm8k/`), a single .jsonl / .parquet file, or the hub id
      `openai/gsm8k` (needs network; read through `datasets.load_dataset`).
    split: "train" or "test" (any name for which a file exists).
    strip_calculator: drop the `<<...>>` calculator annotations from `Example.solution`.

  Returns:
    Examples with `answer` = the number after `####` (commas removed), `solution` = the
    worked solution including its `#### <number>` line, uid `"gsm8k/{split}/{index}"`.

  Raises:
    ValueError: a malformed record (the message names file and line, and quotes it) or an
      empty split.
    FileNotFoundError: no such path, or no file for `split` in the directory.
    RuntimeError: the hub id could not be loaded (e.g. no network).
  """
  if os.path.exists(path_or_id):
    records: list[tuple[str, Any]] = []
    for path in _resolve_files(path_or_id, split):
      reader = parquet_records if path.endswith(".parquet") else jsonl_records
      records.extend(reader(path))
    source = path_or_id
  elif path_or_id == HUB_ID or (path_or_id.count("/") == 1 and not path_or_id.startswith(
      (".", "/", "~"))):
    rows = _load_hub(path_or_id, split)
    records = [(f"{path_or_id}[{split}] row {i}", r) for i, r in enumerate(rows)]
    source = f"{path_or_id} ({split})"
  else:
    raise FileNotFoundError(
        f"load_gsm8k: {path_or_id!r} is neither an existing file or directory nor a hub id "
        f"like {HUB_ID!r}.")
  if not records:
    raise ValueError(f"load_gsm8k: split {split!r} of {source} holds no records; check the "
                     "path and that the file is not empty.")
  return [parse_gsm8k_record(record, where, strip_calculator=strip_calculator,
                             uid=f"{sources.GSM8K}/{split}/{i}")
          for i, (where, record) in enumerate(records)]
