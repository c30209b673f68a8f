"""reasoning-gym scoring and the batch dispatcher."""
import numpy as np
import pytest
import reasoning_gym

from cmdp.data import Example, load_reasoning_gym
from cmdp.rewards import (extract_final_answer, get_dataset, reasoning_gym_score, score_completions,
                          score_details)

ARITH = dict(min_terms=2, max_terms=3, min_digits=1, max_digits=2, operators=("+", "-", "*"))


def test_basic_arithmetic_gold_scores_one_and_gold_plus_one_scores_zero():
  examples = load_reasoning_gym("basic_arithmetic", 30, 11, **ARITH)
  gold = [f"Working it out.\n#### {ex.answer}" for ex in examples]
  wrong = [f"#### {int(ex.answer) + 1}" for ex in examples]
  np.testing.assert_array_equal(score_completions(gold, examples), np.ones(30, np.float32))
  np.testing.assert_array_equal(score_completions(wrong, examples), np.zeros(30, np.float32))


def test_partial_credit_is_the_verifiers_own_score():
  examples = load_reasoning_gym("basic_arithmetic", 10, 3, **ARITH)
  reference = reasoning_gym.create_dataset("basic_arithmetic", size=10, seed=3, **ARITH)
  for ex, entry in zip(examples, reference):
    answer = f"{entry['answer']}0"  # the gold string is a substring: partial credit
    expected = reference.score_answer(answer, entry)
    assert 0 < expected < 1
    got = reasoning_gym_score(f"#### {answer}", ex.entry, "basic_arithmetic", ex.task_kwargs,
                              partial_credit=True)
    assert got.score == pytest.approx(expected)
    assert reasoning_gym_score(f"#### {answer}", ex.entry, "basic_arithmetic",
                               ex.task_kwargs).score == 0.0


@pytest.mark.parametrize("spelling", ["#### {a}.", "#### ${a}", "{a}", "5 + 3 = {a}",
                                      "\\boxed{{{a}}}", "#### {a}.00",
                                      "We add them, which gives us {a}."])
def test_number_spellings_accepted_for_string_verifiers(spelling):
  examples = load_reasoning_gym("basic_arithmetic", 8, 5, **ARITH)
  completions = [spelling.format(a=ex.answer) for ex in examples]
  np.testing.assert_array_equal(score_completions(completions, examples), np.ones(8, np.float32))


def test_gsm_symbolic_worked_solutions_score_one():
  examples = load_reasoning_gym("gsm_symbolic", 4, 2)
  assert all(ex.solution for ex in examples)
  np.testing.assert_array_equal(score_completions([ex.solution for ex in examples], examples),
                                np.ones(4, np.float32))
  wrong = [f"#### {int(float(ex.answer)) + 1}" for ex in examples]
  np.testing.assert_array_equal(score_completions(wrong, examples), np.zeros(4, np.float32))


def test_dataset_cached_per_name_and_kwargs():
  a = get_dataset("chain_sum", {"max_terms": 3, "min_digits": 2})
  b = get_dataset("chain_sum", {"min_digits": 2, "max_terms": 3, "seed": 9, "size": 2})
  c = get_dataset("chain_sum", {"max_terms": 4})
  assert a is b and a is not c
  d = get_dataset("basic_arithmetic", {"operators": ["+", "-"]})
  assert d is get_dataset("basic_arithmetic", {"operators": ("+", "-")})


def test_extract_final_answer():
  assert extract_final_answer("blah\n#### 12\n") == "12"
  assert extract_final_answer("x \\boxed{7} y") == "7"
  assert extract_final_answer("line one\nthe answer: 9\n\n") == "the answer: 9"
  assert extract_final_answer("   ") is None


def test_mixed_batch_dispatch_with_format_weight():
  gsm = Example(uid="g", question="q", answer="18", solution=None, source="gsm8k")
  rg = load_reasoning_gym("basic_arithmetic", 1, 0, **ARITH)[0]
  completions = ["so 18\n#### 18", "the answer is 18", f"#### {rg.answer}", "#### 1000000"]
  examples = [gsm, gsm, rg, rg]
  # task: 1, 1 (last number), 1, 0; format: 1, 0, 1, 1.
  got = score_completions(completions, examples, format_weight=0.25)
  assert got.dtype == np.float32 and got.shape == (4,)
  np.testing.assert_allclose(got, [1.25, 1.0, 1.25, 0.25])
  details = score_details(completions, examples)
  assert [d.extracted for d in details] == ["18", "18", rg.answer, "1000000"]
  assert [d.reason for d in details] == ["numeric", "numeric", "verifier", "verifier"]


def test_length_mismatch_is_an_error():
  gsm = Example(uid="g", question="q", answer="1")
  with pytest.raises(ValueError, match="one example per completion"):
    score_completions(["#### 1", "#### 1"], [gsm])
