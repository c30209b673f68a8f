"""MATH loading from hand-written records in every accepted layout, and malformed inputs."""
import json
import subprocess
import sys

import pytest

from cmdp.data import DEFAULT_MATH_SYSTEM_PROMPT, load_math, load_task
from cmdp.data.math_dataset import parse_level, subject_key
from cmdp.rewards import score_completions

# Hand-written MATH-style records; the gold answers in GOLD were read off by hand.
RECORDS = [
    {"problem": "If $3x + 7 = 22$, what is the value of $x$?",
     "solution": "Subtracting 7 from both sides gives $3x = 15$, so $x = \\boxed{5}$.",
     "level": "Level 1", "type": "Algebra"},
    {"problem": "How many ways are there to choose 2 books from a shelf of 6 different books?",
     "solution": "There are $\\binom{6}{2} = \\frac{6 \\cdot 5}{2} = \\boxed{15}$ ways.",
     "level": "Level 2", "type": "Counting & Probability"},
    {"problem": "Compute $\\cos 45^\\circ$.",
     "solution": "The point $45^\\circ$ around the unit circle is "
                 "$\\left(\\frac{\\sqrt{2}}{2}, \\frac{\\sqrt{2}}{2}\\right)$, so "
                 "$\\cos 45^\\circ = \\boxed{\\frac{\\sqrt{2}}{2}}$.",
     "level": "Level 1", "type": "Precalculus"},
    {"problem": "Solve $x^2 - 5x + 6 \\le 0$. Express your answer in interval notation.",
     "solution": "Factoring gives $(x-2)(x-3) \\le 0$. We first try $\\boxed{(2,3)}$, but the "
                 "endpoints also satisfy the inequality, so the answer is $\\boxed{[2,3]}$.",
     "level": "Level 4", "type": "Intermediate Algebra"},
    {"problem": "What is the remainder when 2024 is divided by 7?",
     "solution": "Since $2024 = 7 \\cdot 289 + 1$, the remainder is $\\boxed 1$.",
     "level": "Level 1", "type": "Number Theory"},
    {"problem": "A circle has radius $2\\sqrt{3}$. What is its area?",
     "solution": "The area is $\\pi (2\\sqrt{3})^2 = \\fbox{$12\\pi$}$.",
     "level": "Level ?", "type": "Geometry"},
    {"problem": "Find the vector $\\mathbf{v}$ with $\\mathbf{v} + \\begin{pmatrix} 1 \\\\ 3 "
                "\\end{pmatrix} = \\begin{pmatrix} 2 \\\\ 1 \\end{pmatrix}$.",
     "solution": "Subtracting, $\\mathbf{v} = \\boxed{\\begin{pmatrix} 1 \\\\ -2 \\end{pmatrix}}$.",
     "level": "Level 2", "type": "Precalculus"},
    {"problem": "List the elements of $\\{x : x^2 = 1\\}$.",
     "solution": "Both $1$ and $-1$ square to 1, so the set is $\\boxed{\\{-1, 1\\}}$.",
     "level": "Level 3", "type": "Prealgebra"},
]
GOLD = ["5", "15", "\\frac{\\sqrt{2}}{2}", "[2,3]", "1", "$12\\pi$",
        "\\begin{pmatrix} 1 \\\\ -2 \\end{pmatrix}", "\\{-1, 1\\}"]
SUBJECT_KEYS = ["algebra", "counting_and_probability", "precalculus", "intermediate_algebra",
                "number_theory", "geometry", "precalculus", "prealgebra"]
LEVELS = [1, 2, 1, 4, 1, None, 2, 3]


def _write_jsonl(path, records):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
  return path


def _check(examples, order=range(len(RECORDS))):
  order = list(order)
  assert [ex.answer for ex in examples] == [GOLD[i] for i in order]
  assert [ex.question for ex in examples] == [RECORDS[i]["problem"] for i in order]
  assert [ex.solution for ex in examples] == [RECORDS[i]["solution"] for i in order]
  assert [ex.entry["subject"] for ex in examples] == [SUBJECT_KEYS[i] for i in order]
  assert [ex.entry["level"] for ex in examples] == [LEVELS[i] for i in order]
  assert {ex.source for ex in examples} == {"math"}
  assert len({ex.uid for ex in examples}) == len(examples)


def test_jsonl_directory_single_file_and_json_list(tmp_path):
  _write_jsonl(tmp_path / "d" / "test.jsonl", RECORDS)
  _write_jsonl(tmp_path / "d" / "train.jsonl", RECORDS[:2])
  examples = load_math(str(tmp_path / "d"), "test")
  _check(examples)
  assert [ex.uid for ex in examples] == [f"math/test/{i}" for i in range(len(RECORDS))]
  _check(load_math(str(tmp_path / "d"), "train"), range(2))
  _check(load_math(str(tmp_path / "d" / "test.jsonl"), "test"))
  (tmp_path / "all.json").write_text(json.dumps(RECORDS), encoding="utf-8")
  _check(load_math(str(tmp_path / "all.json"), "test"))
  (tmp_path / "j").mkdir()
  (tmp_path / "j" / "test.json").write_text(json.dumps(RECORDS[:3]), encoding="utf-8")
  _check(load_math(str(tmp_path / "j"), "test"), range(3))


def test_parquet_layouts(tmp_path):
  import pandas as pd
  pd.DataFrame(RECORDS[:5]).to_parquet(tmp_path / "test-00000-of-00002.parquet")
  pd.DataFrame(RECORDS[5:]).to_parquet(tmp_path / "test-00001-of-00002.parquet")
  _check(load_math(str(tmp_path), "test"))
  # A hub snapshot with one folder per subject (e.g. EleutherAI/hendrycks_math).
  snap = tmp_path / "snapshot"
  for name, rows in (("algebra", [0]), ("precalculus", [2, 6])):
    (snap / name).mkdir(parents=True)
    pd.DataFrame([RECORDS[i] for i in rows]).to_parquet(snap / name / "test-00000.parquet")
  _check(load_math(str(snap), "test"), [0, 2, 6])


def test_original_release_tree(tmp_path):
  # MATH/{split}/<subject>/<n>.json, one object per file; files sort by number (2 < 10).
  placed = {("algebra", "10"): 0, ("algebra", "2"): 1, ("precalculus", "7"): 2}
  for (subject, stem), i in placed.items():
    path = tmp_path / "MATH" / "test" / subject / f"{stem}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(RECORDS[i]), encoding="utf-8")
  for root in (tmp_path / "MATH", tmp_path):
    examples = load_math(str(root), "test")
    _check(examples, [1, 0, 2])
    assert [ex.uid for ex in examples] == ["math/test/algebra/2", "math/test/algebra/10",
                                           "math/test/precalculus/7"]
  # The directory name gives the subject when a record has no 'type'.
  untyped = {k: v for k, v in RECORDS[3].items() if k != "type"}
  (tmp_path / "MATH" / "train" / "number_theory").mkdir(parents=True)
  (tmp_path / "MATH" / "train" / "number_theory" / "1.json").write_text(json.dumps(untyped))
  assert load_math(str(tmp_path / "MATH"), "train")[0].entry["subject"] == "number_theory"


def test_math500_layout_uses_the_answer_field(tmp_path):
  rows = [{"problem": "Convert the point $(0,3)$ to polar coordinates.",
           "solution": "We have $r = 3$ and $\\theta = \\frac{\\pi}{2}$, so the polar "
                       "coordinates are $\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}.$",
           "answer": "\\left( 3, \\frac{\\pi}{2} \\right)", "subject": "Precalculus",
           "level": 2, "unique_id": "test/precalculus/807.json"},
          {"problem": "What is $1+1$?", "solution": "It is $\\boxed{2}$.", "answer": "2",
           "subject": "Prealgebra", "level": 1, "unique_id": "test/prealgebra/1.json"}]
  _write_jsonl(tmp_path / "test.jsonl", rows)
  examples = load_math(str(tmp_path), "test")
  assert [ex.answer for ex in examples] == ["\\left( 3, \\frac{\\pi}{2} \\right)", "2"]
  assert [ex.uid for ex in examples] == ["math/test/precalculus/807", "math/test/prealgebra/1"]
  assert [(ex.entry["subject"], ex.entry["level"], ex.entry["unique_id"]) for ex in examples] == [
      ("precalculus", 2, "test/precalculus/807.json"), ("prealgebra", 1, "test/prealgebra/1.json")]
  _write_jsonl(tmp_path / "dup" / "test.jsonl", [rows[0], rows[0]])
  with pytest.raises(ValueError, match="repeats the record"):
    load_math(str(tmp_path / "dup"), "test")


def test_subject_and_level_filters_and_load_task(tmp_path):
  _write_jsonl(tmp_path / "test.jsonl", RECORDS)
  path = str(tmp_path)
  _check(load_math(path, "test", subjects=["Precalculus"]), [2, 6])
  _check(load_math(path, "test", subjects="algebra, Counting & Probability"), [0, 1])
  _check(load_math(path, "test", levels=[1]), [0, 2, 4])
  _check(load_math(path, "test", subjects=["precalculus"], levels="Level 2"), [6])
  # uids do not depend on filters.
  assert load_math(path, "test", levels=[4])[0].uid == "math/test/3"
  sub = load_task({"task": f"math:{path}", "split": "test", "limit": 2, "levels": [1, 2]},
                  size=99, seed=3)
  _check(sub, [0, 1])
  with pytest.raises(ValueError, match="unknown option"):
    load_task(f"math:{path}", split="test", strip_calculator=True)
  with pytest.raises(ValueError, match="is not one of"):
    load_math(path, "test", subjects=["calculus"])
  with pytest.raises(ValueError, match="is not one of"):
    load_math(path, "test", levels=[6])
  with pytest.raises(ValueError, match="no record .* matches"):
    load_math(path, "test", subjects=["geometry"], levels=[1])


@pytest.mark.parametrize("line, message", [
    ('{"problem": "p", "solution": "no box here", "level": "Level 1"}', "no 'answer' field"),
    ('{"problem": "p", "solution": "\\\\boxed{1", "level": "Level 1"}', "no 'answer' field"),
    ('{"solution": "\\\\boxed{1}"}', "field 'problem'"),
    ('{"problem": "p", "solution": 3}', "field 'solution'"),
    ('{"problem": "p", "solution": "\\\\boxed{1}", "level": "Level 9"}', "field 'level'"),
    ('{"problem": "p", "solution": "\\\\boxed{1}", "answer": 1}', "field 'answer'"),
    ('{"problem": "p", "solution": "\\\\boxed{1}", "type": 5}', "field 'type'"),
    ('["problem", "solution"]', "expected a JSON object"),
    ('{"problem": "p", "solution": ', "invalid JSON"),
])
def test_malformed_records_name_file_and_line(tmp_path, line, message):
  path = _write_jsonl(tmp_path / "test.jsonl", RECORDS[:2])
  with open(path, "a", encoding="utf-8") as f:
    f.write(line + "\n")
  with pytest.raises(ValueError, match=message) as info:
    load_math(str(tmp_path), "test")
  assert f"{path}:3" in str(info.value)


def test_malformed_tree_file_and_empty_split(tmp_path):
  bad = tmp_path / "test" / "algebra" / "3.json"
  bad.parent.mkdir(parents=True)
  bad.write_text("{not json", encoding="utf-8")
  with pytest.raises(ValueError, match="invalid JSON") as info:
    load_math(str(tmp_path), "test")
  assert str(bad) in str(info.value)
  (tmp_path / "empty").mkdir()
  (tmp_path / "empty" / "test.jsonl").write_text("\n\n", encoding="utf-8")
  with pytest.raises(ValueError, match="holds no records"):
    load_math(str(tmp_path / "empty"), "test")


def test_missing_paths_and_offline_hub(tmp_path):
  with pytest.raises(FileNotFoundError, match="neither an existing file"):
    load_math(str(tmp_path / "nope"), "test")
  (tmp_path / "other.txt").write_text("x")
  with pytest.raises(FileNotFoundError, match="other.txt"):
    load_math(str(tmp_path), "test")
  # HF_HUB_OFFLINE=1 (tests/conftest.py): hub ids must fail with a pointer to local files.
  for hub_id in ("HuggingFaceH4/MATH-500", "EleutherAI/hendrycks_math"):
    with pytest.raises(RuntimeError, match="pass a local directory"):
      load_math(hub_id, "test", subjects=["algebra"])


def test_level_and_subject_spellings():
  assert [parse_level(v, "x") for v in ("Level 3", "3", 3, 4.0, "level 5", "Level ?", None)] == [
      3, 3, 3, 4, 5, None, None]
  with pytest.raises(ValueError, match="field 'level'"):
    parse_level("hard", "f.jsonl:1")
  assert subject_key("Counting & Probability") == "counting_and_probability"
  assert subject_key("Intermediate Algebra") == subject_key("intermediate_algebra")


def test_reference_solutions_earn_the_math_reward(tmp_path):
  # What the prompt asks for (a final \boxed{}) is what the reward reads: every reference
  # solution scores 1 on its own example and 0 on the others (all answers differ).
  assert "\\boxed{}" in DEFAULT_MATH_SYSTEM_PROMPT
  _write_jsonl(tmp_path / "test.jsonl", RECORDS)
  examples = load_math(str(tmp_path), "test")
  n = len(examples)
  own = score_completions([ex.solution for ex in examples], examples)
  assert own.tolist() == [1.0] * n
  shifted = score_completions([examples[(i + 1) % n].solution for i in range(n)], examples)
  assert shifted.tolist() == [0.0] * n


def test_data_does_not_import_rewards():
  """Layering: rewards may use `cmdp.data.Example`; data reads gold `\\boxed{}` answers with
  `cmdp.text.last_boxed` and never imports `cmdp.rewards` (checked in a fresh interpreter)."""
  code = ("import sys, cmdp.data; "
          "print(sorted(m for m in sys.modules if m.startswith('cmdp.rewards')))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  assert out.stdout.strip() == "[]"
