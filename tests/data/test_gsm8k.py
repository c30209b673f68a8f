"""GSM8K loading from the real local files, parquet, and malformed inputs."""
import json
import os

import pytest

from cmdp.data import load_gsm8k, load_task
from cmdp.data.gsm8k import strip_calculator_annotations

GSM8K_DIR = "/work/shared/data/gsm8k"


def _raw(split):
  with open(os.path.join(GSM8K_DIR, f"{split}.jsonl"), encoding="utf-8") as f:
    return [json.loads(line) for line in f]


@pytest.mark.parametrize("split, count", [("train", 7_473), ("test", 1_319)])
def test_real_splits(split, count):
  examples = load_gsm8k(GSM8K_DIR, split)
  raw = _raw(split)
  assert len(examples) == len(raw) == count
  assert len({ex.uid for ex in examples}) == count
  for ex, rec in zip(examples, raw):
    float(ex.answer)  # every gold answer is a plain number
    assert "," not in ex.answer
    final = rec["answer"].split("####")[-1].strip()
    assert ex.answer == final.replace(",", "")
    assert ex.question == rec["question"].strip()
    assert "<<" not in ex.solution and ex.solution.endswith(f"#### {final}")
    assert ex.source == "gsm8k"


def test_calculator_annotations():
  text = "He makes 9 * 2 = $<<9*2=18>>18 a day.\n#### 18"
  assert strip_calculator_annotations(text) == "He makes 9 * 2 = $18 a day.\n#### 18"
  first = load_gsm8k(GSM8K_DIR, "test", strip_calculator=False)[0]
  assert first.solution == _raw("test")[0]["answer"]
  assert "<<16-3-4=9>>" in first.solution


def test_single_file_and_load_task(tmp_path):
  by_file = load_gsm8k(os.path.join(GSM8K_DIR, "test.jsonl"))
  assert len(by_file) == 1_319
  sub = load_task(f"gsm8k:{GSM8K_DIR}", split="test", limit=5, size=99, seed=3)
  assert [ex.answer for ex in sub] == [ex.answer for ex in by_file[:5]]
  sub = load_task({"task": f"gsm8k:{GSM8K_DIR}", "split": "test", "limit": 2,
                   "strip_calculator": False})
  assert "<<" in sub[0].solution and len(sub) == 2
  with pytest.raises(ValueError, match="unknown option"):
    load_task(f"gsm8k:{GSM8K_DIR}", split="test", max_terms=2)
  with pytest.raises(ValueError, match="unknown task kind"):
    load_task("mnist:/tmp")


def test_parquet_directory(tmp_path):
  import pandas as pd
  raw = _raw("test")[:20]
  pd.DataFrame(raw[:12]).to_parquet(tmp_path / "test-00000-of-00002.parquet")
  pd.DataFrame(raw[12:]).to_parquet(tmp_path / "test-00001-of-00002.parquet")
  from_parquet = load_gsm8k(str(tmp_path), "test")
  from_jsonl = load_gsm8k(GSM8K_DIR, "test")[:20]
  assert from_parquet == from_jsonl
  with pytest.raises(FileNotFoundError, match="no 'train.jsonl' or 'train\\*.parquet'"):
    load_gsm8k(str(tmp_path), "train")


@pytest.mark.parametrize("bad_line, message", [
    ('{"question": "q", "answer": "x\\n#### 3"', "invalid JSON"),
    ('{"answer": "x\\n#### 3"}', "field 'question'"),
    ('{"question": "q", "answer": 3}', "field 'answer'"),
    ('{"question": "q", "answer": "no final line"}', "no final '#### <number>' line"),
    ('{"question": "q", "answer": "x\\n#### three"}', "not a number"),
    ('[1, 2]', "expected a JSON object"),
])
def test_malformed_line_names_file_and_line(tmp_path, bad_line, message):
  good = json.dumps({"question": "What is 1+1?", "answer": "1+1=2\n#### 2"})
  path = tmp_path / "train.jsonl"
  path.write_text("\n".join([good, good, bad_line, good]) + "\n", encoding="utf-8")
  with pytest.raises(ValueError, match=message) as err:
    load_gsm8k(str(tmp_path), "train")
  assert f"{path}:3" in str(err.value)


def test_long_offending_text_is_truncated(tmp_path):
  path = tmp_path / "test.jsonl"
  path.write_text(json.dumps({"question": "q", "answer": "y" * 5_000}) + "\n", encoding="utf-8")
  with pytest.raises(ValueError, match=f"{path}:1") as err:
    load_gsm8k(str(path))
  assert len(str(err.value)) < 500


def test_empty_split_is_an_error(tmp_path):
  (tmp_path / "test.jsonl").write_text("\n\n", encoding="utf-8")
  with pytest.raises(ValueError, match="holds no records"):
    load_gsm8k(str(tmp_path), "test")


def test_missing_path_and_offline_hub_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="neither an existing file"):
    load_gsm8k(str(tmp_path / "nope"), "test")
  # HF_HUB_OFFLINE=1 (tests/conftest.py): the hub id must fail with a pointer to local files.
  with pytest.raises(RuntimeError, match="pass a local directory"):
    load_gsm8k("openai/gsm8k", "test")
