"""Answer extraction and checking against real GSM8K solutions and hand-checked strings."""
import concurrent.futures
import fractions
import json
import random

import pytest

from cmdp.rewards import (answers_match, check_answer, extract_answer, format_reward,
                          math_reward, parse_number)

GSM8K_TEST = "/work/shared/data/gsm8k/test.jsonl"


def _gsm8k_records(n):
  with open(GSM8K_TEST, encoding="utf-8") as f:
    return [json.loads(line) for _, line in zip(range(n), f)]


def _styles(value: fractions.Fraction) -> list[str]:
  """Ways a model writes a final answer: plain, '####', boxed, currency, separators, units."""
  text = str(value)
  out = [f"#### {text}", rf"so the answer is \boxed{{{text}}}.", f"The answer is {text}."]
  if value.denominator == 1:
    grouped = f"{value.numerator:,}"
    out += [f"The answer is ${grouped}.", f"#### {grouped} dollars", f"{text}.0"]
  return out


def test_real_test_split_golds_right_answers_and_off_by_one():
  """Every item of the real GSM8K test split: its reference solution scores 1; the gold
  in the styles models write scores 1; the gold +-1 scores 0 in every style (large golds
  such as 1,450,000 included: integers match exactly)."""
  records = _gsm8k_records(10_000)
  assert len(records) == 1319
  large = 0
  for rec in records:
    gold = rec["answer"].rsplit("####", 1)[1].strip().replace(",", "")
    value = fractions.Fraction(gold)
    large += abs(value) >= 1_000_000
    assert math_reward(rec["answer"], gold) == 1.0, rec["answer"]
    for text in _styles(value):
      assert math_reward(text, gold) == 1.0, (text, gold)
    for wrong in (value + 1, value - 1):
      for text in _styles(wrong):
        assert math_reward(text, gold) == 0.0, (text, gold)
  assert large >= 2  # the items that a relative tolerance used to get wrong


@pytest.mark.parametrize("completion, gold, expected", [
    ("The answer is $1,234.50.", "1234.5", 1.0),
    ("The answer is $1,234.50.", "1234.05", 0.0),
    ("#### 1,000", "1000", 1.0),
    ("#### 1,000", "1", 0.0),
    (r"so \boxed{\frac{3}{4}}", "0.75", 1.0),
    (r"so \boxed{\frac{3}{4}}", "0.74", 0.0),
    (r"\boxed{\dfrac{-3}{4}}", "-0.75", 1.0),
    ("-5", "-5", 1.0),
    ("-5", "5", 0.0),
    ("#### \u22125", "-5", 1.0),  # unicode minus
    ("5.", "5", 1.0),
    ("#### 5.0", "5", 1.0),
    ("#### 5.01", "5", 0.0),
    ("18 dollars", "18", 1.0),
    ("#### 18 dollars per day", "18", 1.0),
    (r"\boxed{18\text{ dollars}}", "18", 1.0),
    ("50%", "50", 1.0),
    ("#### 50%", "0.5", 1.0),  # a percent may also be read as a fraction of 100
    ("#### 50%", "5", 0.0),
    ("#### 3/4", "0.75", 1.0),
    ("#### 2 1/2", "2.5", 1.0),
    ("#### -$5", "-5", 1.0),
    ("#### $-5", "-5", 1.0),
    ("#### x = 7", "7", 1.0),
    (r"\boxed{\frac{1}{3}}", "0.3333333", 0.0),  # the gold is exact
    ("#### 0.3333333", "1/3", 1.0),  # |diff| = 3.3e-8 <= min(1e-6, 0.5e-7)
    ("#### 0.333", "1/3", 0.0),  # 3.3e-4 > 1e-6
    ("#### 0.334", "1/3", 0.0),  # |0.334 - 1/3| = 6.7e-4 > 0.5e-3
    ("#### 1450001", "1450000", 0.0),  # integers match exactly, however large
    ("#### 1,450,001", "1450000", 0.0),
    ("#### 1450001.0", "1450000", 0.0),  # one place: within 0.05 only
    ("#### 1450000.0", "1450000", 1.0),
    ("#### 999999999999", "1000000000000", 0.0),
    ("#### 2.3333333", "7/3", 1.0),
    ("#### 2.3333343", "7/3", 0.0),
    (r"\boxed{\sqrt{4}}", "2", 1.0),  # symbolic: math-verify
    (r"\boxed{3\sqrt{2}}", "3", 0.0),  # not misread as 3
    ("I first got 12.\n#### 15\nor maybe 12", "15", 1.0),  # '####' beats the last number
    (r"\boxed{12}, not 15", "12", 1.0),  # \boxed beats the last number
    ("no digits here", "5", 0.0),
    ("", "5", 0.0),
])
def test_math_reward_table(completion, gold, expected):
  assert math_reward(completion, gold) == expected


@pytest.mark.parametrize("text, expected", [
    ("The answer is $1,234.50.", "$1,234.50"),
    ("#### 1,000", "1,000"),
    (r"\boxed{\frac{3}{4}}", r"\frac{3}{4}"),
    ("It costs 18 dollars", "18"),
    ("#### \n the total is 7", "7"),  # empty '####' line: fall back to the last number
    (r"\boxed{x{", None),  # unbalanced braces, no number
    ("nothing", None),
])
def test_extract_answer(text, expected):
  assert extract_answer(text) == expected


@pytest.mark.parametrize("text, value, percent", [
    ("1,234.50", fractions.Fraction(2469, 2), False),
    ("$1,234.50.", fractions.Fraction(2469, 2), False),
    (r"\$12", fractions.Fraction(12), False),
    (r"\frac{3}{4}", fractions.Fraction(3, 4), False),
    ("-2 1/2", fractions.Fraction(-5, 2), False),
    ("50\\%", fractions.Fraction(50), True),
    ("7 percent", fractions.Fraction(7), True),
    ("0.125", fractions.Fraction(1, 8), False),
    (".5", fractions.Fraction(1, 2), False),
    ("1{,}000", fractions.Fraction(1000), False),
])
def test_parse_number(text, value, percent):
  assert parse_number(text)[:2] == (value, percent)


@pytest.mark.parametrize("text", ["12 34", "1,2345", "3x", r"3\sqrt{2}", "2^3", "abc", "4/0", ""])
def test_parse_number_rejects(text):
  assert parse_number(text) is None


def _hostile_strings():
  rng = random.Random(0)
  junk = "".join(chr(rng.randrange(0x20, 0x2FFFF)) for _ in range(20_000))
  return [
      "a" * 100_000,
      "{" * 50_000 + "}" * 50_000,
      "\\boxed{" * 30_000 + "5" + "}" * 30_000,
      "9" * 10_000,
      "#### " + "9" * 10_000,
      "#### " + "1," * 50_000,
      "#### " + "(" * 5_000 + "5",
      "\\boxed{" + "2^{" * 40 + "2" + "}" * 40 + "}",
      "\\boxed{10^{10^{10^{10}}}}",
      "\\boxed{\\binom{1000000}{500000}}",
      "\\boxed{99999999999999999999!}",
      "#### " + "\\frac{" * 1_000,
      junk,
      "#### \x00\x01\x02 5\ud800",
      "1" + " " * 100_000 + "x",
  ]


def _score_all(strings):
  out = []
  for s in strings:
    check = check_answer(extract_answer(s), "5")
    out.append((math_reward(s, "5"), format_reward(s), check.correct, bool(check.reason)))
  return out


def test_hostile_strings_score_zero_without_raising_in_main_thread():
  assert _score_all(_hostile_strings()) == [(0.0, 0.0, False, True)] * len(_hostile_strings())


def test_hostile_strings_score_zero_in_a_worker_thread():
  # math-verify's signal timeouts cannot work off the main thread: our own bounds must hold.
  with concurrent.futures.ThreadPoolExecutor(1) as pool:
    result = pool.submit(_score_all, _hostile_strings()).result(timeout=120)
  assert result == [(0.0, 0.0, False, True)] * len(_hostile_strings())


def test_symbolic_path_works_in_a_worker_thread():
  with concurrent.futures.ThreadPoolExecutor(1) as pool:
    ok = pool.submit(answers_match, r"\sqrt{4}", "2").result(timeout=60)
    bad = pool.submit(answers_match, r"\sqrt{5}", "2").result(timeout=60)
  assert (ok, bad) == (True, False)


def test_check_answer_reports_reasons():
  assert check_answer(None, "5") == (False, "no answer found")
  assert check_answer("5", "5") == (True, "numeric")
  assert check_answer(r"\sqrt{4}", "2") == (True, "math_verify")
  assert not check_answer("x" * 1000, "5").correct
  assert "longer than" in check_answer("x" * 1000, "5").reason


@pytest.mark.parametrize("completion, expected", [
    ("Step 1: 2 + 2 = 4.\n#### 4", 1.0),
    ("#### 42\n\n  ", 1.0),
    ("#### 1,234.5", 1.0),
    ("#### -3", 1.0),
    ("#### 42 dollars", 0.0),
    ("#### $42", 0.0),
    ("#### 42\nThen more text", 0.0),
    ("####", 0.0),
    ("The answer is 42", 0.0),
    ("", 0.0),
])
def test_format_reward(completion, expected):
  assert format_reward(completion) == expected
