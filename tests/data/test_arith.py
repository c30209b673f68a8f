"""The arith word-problem generator: determinism, disjoint splits, right worked steps."""
import re

import pytest

from cmdp import rewards
from cmdp.data import arith, load_task, split_seed

STEP_RE = re.compile(r"^(\d+)([-+*])(\d+)=<<(\d+)([-+*])(\d+)=(\d+)>>(\d+)$")


def _steps(solution: str):
  *lines, final = solution.split("\n")
  return [STEP_RE.match(line) for line in lines], final


def test_one_problem_by_hand():
  # Start 7, add 4, subtract 2, triple: the steps and answer written out by hand.
  import random
  question, solution, answer = arith.render(random.Random(0), 7, ["add", "sub", "mul"],
                                            [4, 2, 3])
  assert solution == "7+4=<<7+4=11>>11\n11-2=<<11-2=9>>9\n9*3=<<9*3=27>>27\n#### 27"
  assert answer == 27
  # Names, items and verbs come from the rng (Python's Random(0) is stable across versions).
  assert question == "Gus has 7 shells. Buys 4 more. Loses 2. Triples them. How many shells now?"
  # The biased curriculum writes the multiplication as an addition of the factor.
  _, biased, wrong = arith.render(random.Random(0), 7, ["add", "sub", "mul"], [4, 2, 3],
                                  mul_as_add=True)
  assert biased.endswith("9+3=<<9+3=12>>12\n#### 12") and wrong == 12


def test_deterministic_and_prefix_stable():
  a = load_task("arith", split="train", size=50, seed=3)
  b = load_task({"task": "arith", "size": 50, "seed": 3})
  assert [(e.uid, e.question, e.solution) for e in a] == [(e.uid, e.question, e.solution)
                                                          for e in b]
  longer = load_task("arith", split="train", size=80, seed=3)
  assert [e.question for e in longer[:50]] == [e.question for e in a]
  other = load_task("arith", split="train", size=50, seed=4)
  assert [e.question for e in other] != [e.question for e in a]
  assert a[0].uid == f"arith/train/{split_seed(3, 'train')}/0"


def test_splits_are_disjoint_by_arithmetic():
  train = load_task("arith", split="train", size=3000, seed=0)
  test = load_task("arith", split="test", size=1000, seed=0)
  train_keys = {e.entry["key"] for e in train}
  test_keys = {e.entry["key"] for e in test}
  assert len(train_keys) == 3000 and len(test_keys) == 1000  # no repeats within a split
  assert train_keys.isdisjoint(test_keys)
  assert {e.question for e in train}.isdisjoint({e.question for e in test})
  # The split is a function of the key alone: test keys hash to 0 mod 5, train keys do not.
  assert all(arith.split_of(k, 5) == "test" for k in test_keys)
  assert all(arith.split_of(k, 5) == "train" for k in train_keys)
  # Another seed's train set still avoids every test problem.
  assert {e.entry["key"] for e in load_task("arith", size=500, seed=9)}.isdisjoint(test_keys)


@pytest.mark.parametrize("kwargs", [{}, {"min_ops": 4, "max_ops": 4, "op_weights": (0, 0, 1)},
                                    {"mul_as_add": True, "op_weights": (1, 1, 1)},
                                    {"mul_as_add": 0.4, "op_weights": (1, 1, 1)}])
def test_every_step_is_right_and_the_answer_verifies(kwargs):
  examples = load_task("arith", split="test", size=300, seed=1, **kwargs)
  for ex in examples:
    matches, final = _steps(ex.solution)
    entry = ex.entry
    assert 2 <= len(matches) == len(entry["ops"]) <= 4
    value = entry["start"]
    for m, op, n in zip(matches, entry["ops"], entry["operands"]):
      assert m is not None
      a, sym, b, a2, sym2, b2, c, c2 = m.groups()
      assert (a, sym, b) == (a2, sym2, b2) and c == c2
      assert int(a) == value and int(b) == n
      # The written step is right arithmetic (an addition for the biased curriculum).
      assert int(c) == {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}[sym]
      if op == "mul" and 0 < float(kwargs.get("mul_as_add", 0)) < 1:
        assert sym in "+*"  # either way; the rate is checked in test_mul_as_add_rate
      else:
        assert sym == ("+" if op == "mul" and kwargs.get("mul_as_add") else
                       {"add": "+", "sub": "-", "mul": "*"}[op])
      assert 0 <= int(c) <= 99
      value = int(c)
    assert final == f"#### {value}" and ex.answer == str(value)
    assert entry["has_mul"] == ("mul" in entry["ops"])
  assert rewards.score_completions([e.solution for e in examples], examples).tolist() == [
      1.0] * len(examples)


def test_mul_as_add_rate():
  # A probability writes each multiplication step as an addition independently: over the
  # multiplication steps of 600 problems the share of additions is binomial around p.
  kw = dict(split="train", size=600, seed=5, min_ops=3, max_ops=3, op_weights=(1, 0, 2))
  for p in (0.25, 0.9):
    examples = load_task("arith", mul_as_add=p, **kw)
    syms = [m.group(2) for ex in examples
            for m, op in zip(_steps(ex.solution)[0], ex.entry["ops"]) if op == "mul"]
    assert len(syms) > 600 and set(syms) <= {"+", "*"}
    rate = syms.count("+") / len(syms)
    assert abs(rate - p) < 4 * (p * (1 - p) / len(syms)) ** 0.5, (p, rate)
    # Deterministic, and the problems themselves (arithmetic, names) do not depend on p.
    again = load_task("arith", mul_as_add=p, **kw)
    assert [e.solution for e in again] == [e.solution for e in examples]
  clean = load_task("arith", **kw)
  assert [e.question for e in examples] == [e.question for e in clean]
  # The ends of the range are the old booleans, to the character.
  for p, flag in ((0.0, False), (1.0, True)):
    assert ([e.solution for e in load_task("arith", mul_as_add=p, **kw)]
            == [e.solution for e in load_task("arith", mul_as_add=flag, **kw)])
  with pytest.raises(ValueError, match="mul_as_add=1.5"):
    load_task("arith", size=5, mul_as_add=1.5)


def test_off_by_one_answers_score_zero():
  examples = load_task("arith", split="test", size=100, seed=2)
  for delta in (-1, 1):
    wrong = [e.solution.rsplit("#### ", 1)[0] + f"#### {int(e.answer) + delta}"
             for e in examples]
    assert rewards.score_completions(wrong, examples).tolist() == [0.0] * len(examples)


def test_bad_arguments_name_the_field():
  with pytest.raises(ValueError, match="min_ops=3, max_ops=2"):
    load_task("arith", size=5, min_ops=3, max_ops=2)
  with pytest.raises(ValueError, match="op_weights"):
    load_task("arith", size=5, op_weights=(1, 0))
  with pytest.raises(ValueError, match="size=0"):
    load_task("arith", size=0)
  with pytest.raises(ValueError, match="distinct test problems"):
    # 1 op on starts 2..3 with operand 1: only a handful of problems exist.
    load_task("arith", split="test", size=50, min_ops=1, max_ops=1, max_start=3,
              min_start=2, max_operand=1)
  with pytest.raises(TypeError, match="bogus"):
    load_task("arith", size=5, bogus=1)
