"""The held-out parts of a test split (`cmdp.data.heldout`): evaluated and calibration
problems disjoint from each other and from training, each question once, and made alike."""
import re

import pytest

from cmdp import data
from cmdp.data import heldout
from cmdp.data.example import Example

# The main job's task (configs/smollm2_sums.py): sums of one- and two-digit numbers.
SUMS = dict(min_terms=2, max_terms=2, min_digits=1, max_digits=2, operators=("+",),
            allow_parentheses=False, allow_negation=False)


def _examples(questions):
  return [Example(uid=str(i), question=q, answer="0") for i, q in enumerate(questions)]


def test_distinct_keeps_the_first_of_each_question():
  kept, dropped = heldout.distinct(_examples("abacbd"))
  assert [e.uid for e in kept] == ["0", "1", "3", "5"] and dropped == 2


def test_pairs_split_the_likely_questions_evenly():
  # "a" and "b" drawn 3 times, "c" and "d" twice, "e" once: pairs (a, b), (c, d); "e" is
  # left out. Each part gets one of each pair, in order of first occurrence.
  test, calibration, dropped = heldout.pair_parts(_examples("abcabdcdabe"))
  assert dropped == 6 and len(test) == len(calibration) == 2
  assert {test[0].question, calibration[0].question} == {"a", "b"}
  assert {test[1].question, calibration[1].question} == {"c", "d"}
  # A function of the pairs alone: the same parts from the draws in another order.
  again = heldout.pair_parts(_examples("babadcdcabe"))
  assert {e.question for e in again[0]} == {e.question for e in test}


@pytest.mark.parametrize("task, options", [("reasoning_gym:basic_arithmetic", SUMS),
                                           ("arith", dict(max_ops=2))])
def test_parts_are_disjoint_from_each_other_and_from_training(task, options):
  test, cal, dropped = heldout.load_parts(task, 60, 30, 0, **options)
  train = data.load_task(task, split="train", size=200, seed=0, **options)
  questions = lambda xs: {ex.question for ex in xs}
  assert len(questions(test)) == len(test) <= 60 and len(questions(cal)) == len(cal) <= 30
  assert not questions(test) & questions(cal)
  assert not (questions(test) | questions(cal)) & questions(train)
  if task == "arith":  # no repeats: each part its size
    assert (len(test), len(cal), dropped) == (60, 30, 0)
  with pytest.raises(ValueError, match="calibration_size=0"):
    heldout.load_parts(task, 4, 0, 0, **options)


def test_one_digit_sums_fall_evenly_into_the_parts():
  # 400 draws of one- and two-digit sums: about half the draws are one-digit sums, a few
  # questions; a hash of each question alone gave the parts 9 and 14 of them.
  test, cal, _ = heldout.load_parts("reasoning_gym:basic_arithmetic", 200, 200, 0, **SUMS)
  one_digit = lambda xs: sum(
      all(len(n) == 1 for n in re.findall(r"\d+", ex.question)) for ex in xs)
  assert abs(one_digit(test) - one_digit(cal)) <= 1 and one_digit(test) >= 5
  assert abs(len(test) - len(cal)) <= 1
