"""MATH (Hendrycks et al., 2021) loader: local files in four layouts, or a hub dataset.

Records are `{"problem", "solution", "level": "Level 3", "type": "Algebra"}`; the gold
answer is the content of the solution's last `\\boxed{...}` (or `\\fbox{...}`). MATH-500
style records (`{"problem", "solution", "answer", "subject", "level": 3, "unique_id"}`)
carry the answer explicitly, and it is used as is.

Prompts for MATH ask for the final answer in `\\boxed{}` (`DEFAULT_MATH_SYSTEM_PROMPT`,
the Qwen2.5-Math chain-of-thought instruction), and `cmdp.rewards` scores examples with
`source="math"` by the last `\\boxed{}` of a completion, compared symbolically.
"""
from __future__ import annotations

import glob
import json
import os
import re
from typing import Any, Iterable, Iterator, Mapping, Sequence

from cmdp import sources
from cmdp.data.example import Example
from cmdp.data.records import jsonl_records, parquet_records, require_text_fields, shorten
from cmdp.text import last_boxed

DEFAULT_MATH_SYSTEM_PROMPT = (
    "Please reason step by step, and put your final answer within \\boxed{}.")
SUBJECTS = ("algebra", "counting_and_probability", "geometry", "intermediate_algebra",
            "number_theory", "prealgebra", "precalculus")  # canonical subject keys
LEVELS = (1, 2, 3, 4, 5)
PER_SUBJECT_HUB_IDS = ("EleutherAI/hendrycks_math",)  # hub datasets with one config per subject
_LEVEL_RE = re.compile(r"(?:level\s*)?([1-5])", re.IGNORECASE)


def subject_key(name: str) -> str:
  """Canonical subject key: `"Counting & Probability"` -> `"counting_and_probability"`."""
  key = name.strip().lower().replace("&", " and ")
  return re.sub(r"[\s\-_]+", "_", key).strip("_")


def parse_level(value: Any, where: str) -> int | None:
  """`"Level 3"`, `"3"` or `3` -> 3; `"Level ?"` (a few MATH train records) or None -> None.

  Raises:
    ValueError: naming `where`, for any other value.
  """
  if value is None:
    return None
  if isinstance(value, float) and value.is_integer():
    value = int(value)  # parquet columns with a missing level turn into floats
  if isinstance(value, int) and not isinstance(value, bool) and value in LEVELS:
    return value
  if isinstance(value, str):
    if value.strip().lower() in ("level ?", "?", ""):
      return None
    m = _LEVEL_RE.fullmatch(value.strip())
    if m:
      return int(m.group(1))
  raise ValueError(f"{where}: field 'level' must be 'Level 1'..'Level 5' or 1..5, got "
                   f"{shorten(value)}.")


def parse_math_record(record: Any, where: str, *, uid: str, subject: str | None = None
                      ) -> Example:
  """Turns one MATH record into an `Example` with `source="math"`.

  Args:
    record: the decoded record.
    where: "file:line" (or file, or hub row) used in error messages.
    uid: the example's uid.
    subject: subject to use when the record has no `type` / `subject` (e.g. from the
      directory name in the original release's tree).

  Returns:
    `Example(question=problem, answer=gold, solution=worked solution, source="math",
    entry={"subject", "level", "unique_id"})`; `answer` is the record's non-empty `answer`
    when present, else the last `\\boxed{}` of `solution`.

  Raises:
    ValueError: naming `where` and quoting the record, when it is not an object, `problem`
      or `solution` is missing or not a non-empty string, no answer can be found, or a
      field has the wrong type.
  """
  require_text_fields(record, ("problem", "solution"), where)
  answer = record.get("answer")
  if answer is not None and not isinstance(answer, str):
    raise ValueError(f"{where}: field 'answer' must be a string, got {shorten(answer)}.")
  if not answer or not answer.strip():
    answer = last_boxed(record["solution"], max_chars=None)
    if not answer:
      raise ValueError(f"{where}: no 'answer' field and no balanced \\boxed{{...}} in field "
                       f"'solution': {shorten(record['solution'][-200:])}.")
  raw_subject = record.get("type", record.get("subject", subject))
  if raw_subject is not None and not isinstance(raw_subject, str):
    raise ValueError(f"{where}: field 'type' / 'subject' must be a string, got "
                     f"{shorten(raw_subject)}.")
  unique_id = record.get("unique_id")
  entry = {"subject": subject_key(raw_subject) if raw_subject else None,
           "level": parse_level(record.get("level"), where),
           "unique_id": unique_id if isinstance(unique_id, str) else None}
  return Example(uid=uid, question=record["problem"].strip(), answer=answer.strip(),
                 solution=record["solution"].strip(), source=sources.MATH, entry=entry)


def _json_records(path: str) -> Iterator[tuple[str, Any]]:
  """A `.json` file: one record (the original release) or a list of records."""
  with open(path, encoding="utf-8") as f:
    try:
      data = json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f"{path}: invalid JSON ({e.msg} at line {e.lineno}).") from e
  if isinstance(data, list):
    for i, record in enumerate(data):
      yield f"{path}: record {i}", record
  else:
    yield path, data


def _file_records(path: str) -> Iterator[tuple[str, Any]]:
  if path.endswith(".parquet"):
    return parquet_records(path)
  if path.endswith(".json"):
    return _json_records(path)
  return jsonl_records(path)


def _number_then_name(path: str) -> tuple[int, str]:
  stem = os.path.splitext(os.path.basename(path))[0]
  return (int(stem), stem) if stem.isdigit() else (1 << 62, stem)


def _tree_records(split_dir: str, split: str) -> list[tuple[str, Any, str | None, str]]:
  """The original release: `{split}/<subject>/<n>.json`, sorted by subject then number."""
  out = []
  for subject_dir in sorted(d for d in os.listdir(split_dir)
                            if os.path.isdir(os.path.join(split_dir, d))):
    paths = glob.glob(os.path.join(glob.escape(os.path.join(split_dir, subject_dir)), "*.json"))
    for path in sorted(paths, key=_number_then_name):
      stem = os.path.splitext(os.path.basename(path))[0]
      for where, record in _json_records(path):
        out.append((where, record, subject_dir, f"{split}/{subject_key(subject_dir)}/{stem}"))
  return out


def _flat_records(paths: Sequence[str]) -> list[tuple[str, Any, None, None]]:
  """Records of flat files, which give no subject or uid suffix through their layout."""
  return [(where, record, None, None) for path in paths
          for where, record in _file_records(path)]


def _local_records(path: str, split: str) -> list[tuple[str, Any, str | None, str | None]]:
  """(where, record, subject from the layout, uid suffix or None) for every record."""
  if os.path.isfile(path):
    return _flat_records([path])
  for name in (f"{split}.jsonl", f"{split}.json"):
    if os.path.isfile(os.path.join(path, name)):
      return _flat_records([os.path.join(path, name)])
  escaped = glob.escape(path)
  parquet = sorted(glob.glob(os.path.join(escaped, f"{split}*.parquet")))
  if not parquet:  # a hub snapshot with one folder per subject
    parquet = sorted(glob.glob(os.path.join(escaped, "*", f"{split}*.parquet")))
  if parquet:
    return _flat_records(parquet)
  for split_dir in (os.path.join(path, split), os.path.join(path, "MATH", split)):
    if os.path.isdir(split_dir):
      return _tree_records(split_dir, split)
  listing = sorted(os.listdir(path))[:20]
  raise FileNotFoundError(
      f"load_math: no '{split}.jsonl', '{split}.json', '{split}*.parquet' or "
      f"'{split}/<subject>/<n>.json' "
      f"tree in directory {path!r} (it holds {listing}); pass the directory holding the "
      "split, or a file path.")


def _load_hub(hub_id: str, split: str, subjects: Sequence[str] | None) -> list[dict[str, Any]]:
  try:
    import datasets  # pylint: disable=g-import-not-at-top
    if hub_id in PER_SUBJECT_HUB_IDS:
      rows = []
      for subject in subjects or SUBJECTS:
        rows.extend(datasets.load_dataset(hub_id, subject, split=split))
      return rows
    return list(datasets.load_dataset(hub_id, split=split))
  except Exception as e:  # pylint: disable=broad-except
    raise RuntimeError(
        f"load_math: could not load {hub_id!r} split {split!r} from the Hugging Face hub "
        f"({type(e).__name__}: {str(e)[:300]}); no local path of that name exists either. "
        "Without network access or a cached copy, pass a local directory holding "
        f"{split}.jsonl (or {split}*.parquet, or the original MATH/{split}/<subject>/<n>.json "
        "tree) instead.") from e


def _normalize_filter(values: Any, name: str, parse, allowed: Iterable[Any]) -> set | None:
  """The set of canonical keys a `subjects=` / `levels=` argument selects (None: all)."""
  if values is None:
    return None
  if isinstance(values, str):
    values = [v for v in values.split(",") if v.strip()]
  elif isinstance(values, int):
    values = [values]
  allowed = set(allowed)
  out = set()
  for value in values:
    try:
      key = parse(value)
    except (TypeError, ValueError, AttributeError):
      key = None
    if key not in allowed:
      raise ValueError(f"load_math: {name}={values!r}: {value!r} is not one of "
                       f"{sorted(allowed)}.")
    out.add(key)
  if not out:
    raise ValueError(f"load_math: {name}={values!r} selects nothing; pass None for all.")
  return out


def load_math(path_or_id: str, split: str, *, subjects: Sequence[str] | str | None = None,
              levels: Sequence[int] | int | None = None) -> list[Example]:
  """Loads one MATH split, optionally only some subjects and difficulty levels.

  Prompts built from these examples should ask for the final answer in `\\boxed{}` (use
  `system_prompt=DEFAULT_MATH_SYSTEM_PROMPT` in `cmdp.data.build_prompt`): that is what
  the reward (`cmdp.rewards`, `source="math"`) reads.

  Args:
    path_or_id: one of
      * a directory holding `{split}.jsonl` (Hendrycks or MATH-500 records), `{split}.json`
        (a list of records) or `{split}*.parquet` (also one level down, e.g.
        `<subject>/{split}-*.parquet`);
      * the original release's directory holding `{split}/<subject>/<n>.json` (one JSON
        object per file), or its parent holding `MATH/{split}/...`;
      * a single `.jsonl`, `.parquet` or `.json` (one record or a list) file;
      * a hub id read with `datasets.load_dataset` (needs network or a cached copy), e.g.
        `HuggingFaceH4/MATH-500` (split "test") or `EleutherAI/hendrycks_math` (one config
        per subject; only the requested subjects are fetched).
    split: "train" or "test" (any name for which files exist).
    subjects: keep only these subjects, in any spelling (`"Counting & Probability"` or
      `"counting_and_probability"`; a comma-separated string works); None keeps all.
    levels: keep only these difficulty levels (1..5); records without a level are dropped
      when this is set; None keeps all.

  Returns:
    Examples in file order (the tree: by subject, then problem number), `source="math"`,
    `answer` = the record's `answer` or else the last `\\boxed{}` content of the solution,
    `solution` = the worked solution (for SFT), `entry` = `{"subject": canonical key or
    None, "level": 1..5 or None, "unique_id": str or None}`. uids are
    `"math/{unique_id without .json}"` when records carry one, `"math/{split}/<subject>/<n>"`
    in the tree layout, else `"math/{split}/{index}"`; they do not depend on the filters.

  Raises:
    ValueError: a malformed record (the message names the file and line or record), an
      empty split, an unknown subject or level, no record left after filtering, or two
      records with the same uid.
    FileNotFoundError: no such path, or no file for `split` in the directory.
    RuntimeError: the hub id could not be loaded (e.g. no network and no cache).
  """
  subject_set = _normalize_filter(subjects, "subjects", subject_key, SUBJECTS)
  level_set = _normalize_filter(levels, "levels", lambda v: parse_level(v, "levels"), LEVELS)
  if os.path.exists(path_or_id):
    records = _local_records(path_or_id, split)
    source = path_or_id
  elif path_or_id.count("/") == 1 and not path_or_id.startswith((".", "/", "~")):
    rows = _load_hub(path_or_id, split, sorted(subject_set) if subject_set else None)
    records = [(f"{path_or_id}[{split}] row {i}", r, None, None) for i, r in enumerate(rows)]
    source = f"{path_or_id} ({split})"
  else:
    raise FileNotFoundError(
        f"load_math: {path_or_id!r} is neither an existing file or directory nor a hub id "
        "like 'HuggingFaceH4/MATH-500'.")
  if not records:
    raise ValueError(f"load_math: split {split!r} of {source} holds no records; check the "
                     "path and that the files are not empty.")
  examples, seen = [], {}
  for i, (where, record, subject, suffix) in enumerate(records):
    unique_id = record.get("unique_id") if isinstance(record, Mapping) else None
    if isinstance(unique_id, str) and unique_id.strip():
      suffix = re.sub(r"\.json$", "", unique_id.strip())
    uid = f"math/{suffix or f'{split}/{i}'}"
    if uid in seen:
      raise ValueError(f"{where}: uid {uid!r} repeats the record at {seen[uid]}; every "
                       "record needs a distinct 'unique_id'.")
    seen[uid] = where
    examples.append(parse_math_record(record, where, uid=uid, subject=subject))
  kept = [ex for ex in examples
          if (subject_set is None or ex.entry["subject"] in subject_set)
          and (level_set is None or ex.entry["level"] in level_set)]
  if not kept:
    found = sorted({(ex.entry["subject"] or "?", ex.entry["level"] or 0) for ex in examples})
    raise ValueError(f"load_math: no record of {source} matches subjects={subjects!r}, "
                     f"levels={levels!r}; (subject, level) pairs present: {found[:20]}.")
  return kept
