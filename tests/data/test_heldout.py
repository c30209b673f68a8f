"""The held-out parts of a test split (`cmdp.data.heldout`): evaluated and calibration
problems disjoint from each other and from training, each question once."""
import pytest

from cmdp import data
from cmdp.data import heldout
from cmdp.data.example import Example

SUMS = dict(min_terms=2, max_terms=2, min_digits=1, max_digits=1, operators=("+", "-"))


def test_parts_cut_the_questions_in_halves():
  questions = [f"Calculate {a} + {b}." for a in range(40) for b in range(40)]
  parts = [heldout.part_of(q) for q in questions]
  assert set(parts) == {"test", "calibration"}
  assert abs(parts.count("calibration") / len(parts) - heldout.CALIBRATION_SHARE) < 0.04
  assert [heldout.part_of(q) for q in questions] == parts  # a function of the text


def test_distinct_keeps_the_first_of_each_question():
  ex = [Example(uid=str(i), question=q, answer="0") for i, q in enumerate("abacbd")]
  kept, dropped = heldout.distinct(ex)
  assert [e.uid for e in kept] == ["0", "1", "3", "5"] and dropped == 2


@pytest.mark.parametrize("task, options", [("reasoning_gym:basic_arithmetic", SUMS),
                                           ("arith", dict(max_ops=2))])
def test_parts_are_disjoint_from_each_other_and_from_training(task, options):
  test, dropped = heldout.load_part(task, "test", 40, 0, **options)
  cal, _ = heldout.load_part(task, "calibration", 40, 0, **options)
  train = data.load_task(task, split="train", size=200, seed=0, **options)
  questions = lambda xs: {ex.question for ex in xs}
  assert len(questions(test)) == len(test) and len(questions(cal)) == len(cal)
  assert len(test) + dropped == 40  # the 40 draws, each question once
  assert not questions(test) & questions(cal)
  assert not (questions(test) | questions(cal)) & questions(train)
  assert {heldout.part_of(q) for q in questions(test)} == {"test"}
  assert {heldout.part_of(q) for q in questions(cal)} == {"calibration"}
  with pytest.raises(ValueError, match="part="):
    heldout.load_part(task, "train", 4, 0, **options)
