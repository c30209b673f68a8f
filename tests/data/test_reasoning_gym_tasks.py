"""reasoning-gym examples: content, solutions, and disjoint train / test seeds."""
import numpy as np
import pytest
import reasoning_gym

from cmdp.data import TEST_SEED_OFFSET, load_reasoning_gym, load_task, split_seed
from cmdp.data.reasoning_gym_tasks import TEST_SHARE, question_split

ARITH = dict(min_terms=2, max_terms=2, min_digits=1, max_digits=1, operators=("+", "-"))


def test_examples_match_the_generator():
  examples = load_reasoning_gym("basic_arithmetic", 12, 7, **ARITH)
  reference = list(reasoning_gym.create_dataset("basic_arithmetic", size=12, seed=7, **ARITH))
  assert [ex.question for ex in examples] == [e["question"] for e in reference]
  assert [ex.answer for ex in examples] == [e["answer"] for e in reference]
  assert [ex.entry for ex in examples] == reference
  assert examples[3].uid == "reasoning_gym/basic_arithmetic/7/3"
  assert examples[0].source == "reasoning_gym/basic_arithmetic"
  assert examples[0].task_kwargs == ARITH and examples[0].solution is None


def test_gsm_symbolic_solution_is_answer_cot():
  examples = load_reasoning_gym("gsm_symbolic", 3, 1)
  reference = list(reasoning_gym.create_dataset("gsm_symbolic", size=3, seed=1))
  assert [ex.solution for ex in examples] == [e["metadata"]["answer_cot"] for e in reference]


def test_train_and_test_use_disjoint_seed_ranges():
  assert split_seed(5, "train") == 5 and split_seed(5, "test") == 5 + TEST_SEED_OFFSET
  with pytest.raises(ValueError, match="'train' and 'test'"):
    split_seed(5, "validation")
  spec = {"task": "reasoning_gym:chain_sum", "size": 200, "seed": 3, "min_digits": 4,
          "max_digits": 4, "min_terms": 3, "max_terms": 3}
  train = load_task(spec, split="train")
  test = load_task(spec, split="test")
  # Item i of seed s comes from Random(s + i): these seed ranges do not overlap, and with
  # 4-digit operands (about 1e11 problems) no question repeats.
  assert {ex.question for ex in train}.isdisjoint({ex.question for ex in test})
  # Each split keeps, in seed order, the draws of its seed range whose question is its own.
  kwargs = {k: spec[k] for k in list(spec)[3:]}
  for split, got, first in (("train", train, 3), ("test", test, 3 + TEST_SEED_OFFSET)):
    draws = load_reasoning_gym("chain_sum", 2_000, first, **kwargs)
    assert [ex.question for ex in got] == [ex.question for ex in draws
                                           if question_split(ex.question) == split][:200]


def test_a_small_task_splits_by_question():
  """Two-term sums of one or two digits (about 12,000 questions, the one-digit ones drawn
  far more often): no test question is a training one, and a fifth of all questions are
  test questions."""
  spec = {"task": "reasoning_gym:basic_arithmetic", "min_terms": 2, "max_terms": 2,
          "min_digits": 1, "max_digits": 2, "operators": ("+",), "allow_parentheses": False,
          "allow_negation": False}
  train = load_task(spec, split="train", size=2_000)
  test = load_task(spec, split="test", size=200)
  assert len(train) == 2_000 and len(test) == 200
  assert {ex.question for ex in train}.isdisjoint({ex.question for ex in test})
  questions = [f"Calculate {a} + {b}." for a in range(100) for b in range(100)]
  share = np.mean([question_split(q) == "test" for q in questions])
  assert abs(share - TEST_SHARE) < 0.02



def test_bad_task_arguments_are_clear_errors():
  with pytest.raises(ValueError, match="cannot create task 'no_such_task'"):
    load_reasoning_gym("no_such_task", 3, 0)
  with pytest.raises(ValueError, match="cannot create task 'chain_sum'"):
    load_reasoning_gym("chain_sum", 3, 0, colour="red")
  with pytest.raises(ValueError, match="size=0"):
    load_reasoning_gym("chain_sum", 0, 0)
