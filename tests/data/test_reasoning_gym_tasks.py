"""reasoning-gym examples: content, solutions, and disjoint train / test seeds."""
import pytest
import reasoning_gym

from cmdp.data import TEST_SEED_OFFSET, load_reasoning_gym, load_task, split_seed

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
  assert train[0].uid == "reasoning_gym/chain_sum/3/0"
  assert test[0].uid == f"reasoning_gym/chain_sum/{3 + TEST_SEED_OFFSET}/0"
  # The default split is train and a seed-offset dataset is a shifted window of the same one.
  shifted = load_reasoning_gym("chain_sum", 5, 4, **{k: spec[k] for k in list(spec)[3:]})
  assert [ex.question for ex in shifted] == [ex.question for ex in train[1:6]]


def test_bad_task_arguments_are_clear_errors():
  with pytest.raises(ValueError, match="cannot create task 'no_such_task'"):
    load_reasoning_gym("no_such_task", 3, 0)
  with pytest.raises(ValueError, match="cannot create task 'chain_sum'"):
    load_reasoning_gym("chain_sum", 3, 0, colour="red")
  with pytest.raises(ValueError, match="size=0"):
    load_reasoning_gym("chain_sum", 0, 0)
