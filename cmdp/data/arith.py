"""Multi-step arithmetic word problems in the GSM8K format, generated in-process.

    Ann has 7 pens. Buys 4 more. Gives away 2. Triples them. How many pens now?

    7+4=<<7+4=11>>11
    11-2=<<11-2=9>>9
    9*3=<<9*3=27>>27
    #### 27

Each problem starts from an amount and applies 2-4 operations (`add`: "Buys n more.",
`sub`: "Gives away n.", `mul`: "Doubles them." / "Triples them."), every intermediate value
an integer in `[0, max_value]`; the worked solution writes one GSM8K calculator step
`a op b=<<a op b=c>>c` per operation and ends with `#### <answer>`. Numbers stay small so a
character-level model trained from scratch can learn the task in minutes on a CPU.

Splits. A problem's arithmetic (start, operations, operands; not the names) has a key; the
key's hash puts it in exactly one split (`test` when `sha256(key) % test_modulus == 0`), so
no test problem's arithmetic appears in any train set, whatever the seed or size. Within a
split, problems are drawn from `random.Random` seeded by `(split seed, draw index)` and
repeated keys are skipped, so every problem of a split is distinct and a list of `size`
problems is a prefix of any longer list with the same arguments.

`mul_as_add` writes a biased curriculum: a "Doubles / Triples them." step is solved as an
addition of the factor (`9+3=<<9+3=12>>12`), and `answer` follows it. `True` (or 1.0) does so
for every multiplication step; a probability p in (0, 1) for each one independently (drawn
from the problem's own generator, so the curriculum stays deterministic), the rest written
right (a problem's wording does not depend on it; one whose biased chain would go below zero
is skipped). It trains a model whose choice of operator on such a step is a learnt habit: the
study in `configs/study_arith.py` gives its teacher a strong habit and its student a weaker
one, and the verifier marks the additions wrong against a clean test split.
"""
from __future__ import annotations

import hashlib
import random
from typing import Sequence

from cmdp import sources
from cmdp.data.example import Example

OPS = ("add", "sub", "mul")
NAMES = ("Ann", "Ben", "Cal", "Dee", "Eve", "Fay", "Gus", "Hal", "Ivy", "Jon", "Kim", "Lou")
ITEMS = ("pens", "cups", "eggs", "cards", "coins", "books", "shells", "rocks")
_ADD = ("Buys {n} more.", "Finds {n} more.", "Gets {n} more.")
_SUB = ("Gives away {n}.", "Loses {n}.", "Sells {n}.")
_MUL = {2: "Doubles them.", 3: "Triples them."}
_SYMBOL = {"add": "+", "sub": "-", "mul": "*"}
_MAX_DRAWS_PER_EXAMPLE = 200  # give up (and say why) when the problem space is exhausted


def apply_op(op: str, value: int, operand: int) -> int:
  """The result of one step: `value + operand`, `value - operand` or `value * operand`."""
  if op == "add":
    return value + operand
  if op == "sub":
    return value - operand
  if op == "mul":
    return value * operand
  raise ValueError(f"apply_op: op={op!r}; use one of {OPS}.")


def step_text(value: int, op: str, operand: int, result: int) -> str:
  """One GSM8K calculator step, e.g. `7+4=<<7+4=11>>11`."""
  expr = f"{value}{_SYMBOL[op]}{operand}"
  return f"{expr}=<<{expr}={result}>>{result}"


def problem_key(start: int, ops: Sequence[str], operands: Sequence[int]) -> str:
  """The arithmetic of a problem as a string (names and wording left out)."""
  return f"{start}|" + "|".join(f"{o}{n}" for o, n in zip(ops, operands))


def split_of(key: str, test_modulus: int) -> str:
  """"test" for keys whose sha256 is 0 mod `test_modulus`, else "train"."""
  digest = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big")
  return "test" if digest % test_modulus == 0 else "train"


def _draw(rng: random.Random, min_ops: int, max_ops: int, min_start: int, max_start: int,
          max_operand: int, max_value: int, weights: Sequence[float]):
  """Start, ops and operands of one problem; every intermediate value in [0, max_value]."""
  value = start = rng.randint(min_start, max_start)
  ops, operands = [], []
  for _ in range(rng.randint(min_ops, max_ops)):
    allowed = {"add": value + 1 <= max_value, "sub": value >= 1,
               "mul": 2 * value <= max_value and value >= 1}
    w = [wt if allowed[o] else 0.0 for o, wt in zip(OPS, weights)]
    if not sum(w):
      w = [1.0 if allowed[o] else 0.0 for o in OPS]
    op = rng.choices(OPS, weights=w)[0]
    if op == "add":
      n = rng.randint(1, min(max_operand, max_value - value))
    elif op == "sub":
      n = rng.randint(1, min(max_operand, value))
    else:
      n = rng.choice([k for k in (2, 3) if k * value <= max_value])
    ops.append(op)
    operands.append(n)
    value = apply_op(op, value, n)
  return start, ops, operands


def _as_add(ops: Sequence[str], mul_as_add) -> list[bool]:
  """Per step: written as an addition (a bool for every multiplication step, or one flag per
  step, passed through; a probability is drawn into flags by `draw_as_add` first)."""
  if isinstance(mul_as_add, (bool, int, float)):
    if mul_as_add not in (0, 1):
      raise ValueError(f"mul_as_add={mul_as_add!r}: render and written_values take a bool or "
                       "one flag per step; draw a probability's flags with draw_as_add.")
    return [op == "mul" and bool(mul_as_add) for op in ops]
  return [bool(flag) for flag in mul_as_add]


def draw_as_add(rng: random.Random, ops: Sequence[str], mul_as_add: float) -> list[bool]:
  """Which multiplication steps the biased curriculum writes as additions: each with
  probability `mul_as_add` (0 and 1 draw nothing from `rng`)."""
  p = float(mul_as_add)
  if p <= 0.0 or p >= 1.0:
    return [op == "mul" and p >= 1.0 for op in ops]
  return [op == "mul" and rng.random() < p for op in ops]


def written_values(start: int, ops: Sequence[str], operands: Sequence[int],
                   mul_as_add=False) -> list[int]:
  """The value after each written step (multiplications as additions where `mul_as_add`:
  a bool for every such step, or one flag per step)."""
  values, value = [], start
  for op, n, as_add in zip(ops, operands, _as_add(ops, mul_as_add)):
    value = apply_op("add" if as_add else op, value, n)
    values.append(value)
  return values


def render(rng: random.Random, start: int, ops: Sequence[str], operands: Sequence[int],
           mul_as_add=False) -> tuple[str, str, int]:
  """`(question, worked solution, answer)` of one problem; `mul_as_add`: a bool for every
  multiplication step, or one flag per step (`draw_as_add`)."""
  flags = _as_add(ops, mul_as_add)
  name, item = rng.choice(NAMES), rng.choice(ITEMS)
  sentences = [f"{name} has {start} {item}."]
  lines, value = [], start
  for op, n, as_add in zip(ops, operands, flags):
    if op == "mul":
      sentences.append(_MUL[n])
    else:
      sentences.append(rng.choice(_ADD if op == "add" else _SUB).format(n=n))
    written = "add" if as_add else op
    result = apply_op(written, value, n)
    lines.append(step_text(value, written, n, result))
    value = result
  sentences.append(f"How many {item} now?")
  return " ".join(sentences), "\n".join(lines + [f"#### {value}"]), value


def load_arith(size: int, seed: int, split: str = "train", *, min_ops: int = 2,
               max_ops: int = 4, min_start: int = 2, max_start: int = 20,
               max_operand: int = 9, max_value: int = 99,
               op_weights: Sequence[float] = (0.45, 0.45, 0.1), mul_as_add: float = False,
               test_modulus: int = 5) -> list[Example]:
  """Generates `size` distinct problems of `split`.

  Args:
    size: number of problems.
    seed: generator seed (use `cmdp.data.split_seed(seed, split)` so train and test draw
      from disjoint seed ranges; disjointness of the problems themselves comes from the
      key hash, see the module docstring).
    split: "train" or "test": only problems whose key hashes to this split are kept.
    min_ops, max_ops: number of operations per problem (inclusive range).
    min_start, max_start: the starting amount (inclusive range).
    max_operand: largest n added or subtracted (multipliers are 2 or 3).
    max_value: largest intermediate value (results never go below 0).
    op_weights: relative weights of (add, sub, mul) for each step.
    mul_as_add: write "Doubles / Triples them." steps as additions (a biased curriculum):
      True for every such step, or the probability of each (see the module docstring).
    test_modulus: one key in `test_modulus` (by hash) belongs to the test split.

  Returns:
    Examples with `source="arith"` (the GSM8K answer check scores them), `solution` the
    worked steps, `answer` the final integer as a string, and `entry` the arithmetic:
    `{"start", "ops", "operands", "has_mul", "key"}`.

  Raises:
    ValueError: naming the bad argument, or when the problem space holds fewer than `size`
      distinct problems of this split.
  """
  _check(size, split, min_ops, max_ops, min_start, max_start, max_operand, max_value,
         op_weights, test_modulus, mul_as_add)
  kwargs = dict(min_ops=min_ops, max_ops=max_ops, min_start=min_start, max_start=max_start,
                max_operand=max_operand, max_value=max_value, op_weights=tuple(op_weights),
                mul_as_add=mul_as_add, test_modulus=test_modulus)
  examples, seen, draw = [], set(), 0
  while len(examples) < size:
    if draw >= _MAX_DRAWS_PER_EXAMPLE * size:
      raise ValueError(
          f"load_arith: found only {len(examples)} distinct {split} problems in {draw} draws "
          f"for size={size}; lower size or widen the problem space (max_ops, max_start, "
          "max_operand, max_value).")
    rng = random.Random(f"arith/{seed}/{draw}")
    draw += 1
    start, ops, operands = _draw(rng, min_ops, max_ops, min_start, max_start, max_operand,
                                 max_value, op_weights)
    key = problem_key(start, ops, operands)
    if key in seen or split_of(key, test_modulus) != split:
      continue
    # Its own generator, so the problem and its wording do not depend on mul_as_add.
    as_add = draw_as_add(random.Random(f"arith/{seed}/{draw}/as_add"), ops, mul_as_add)
    if any(as_add) and min(written_values(start, ops, operands, as_add)) < 0:
      continue  # the biased chain would subtract below zero: not a problem of this curriculum
    seen.add(key)
    question, solution, answer = render(rng, start, ops, operands, as_add)
    examples.append(Example(
        uid=f"{sources.ARITH}/{split}/{seed}/{len(examples)}", question=question,
        answer=str(answer), solution=solution, source=sources.ARITH,
        entry={"start": start, "ops": list(ops), "operands": list(operands),
               "has_mul": "mul" in ops, "key": key},
        task_kwargs=kwargs))
  return examples


def _check(size, split, min_ops, max_ops, min_start, max_start, max_operand, max_value,
           op_weights, test_modulus, mul_as_add=False) -> None:
  def fail(field, fix):
    raise ValueError(f"load_arith: {field}: {fix}.")
  if not isinstance(size, int) or size <= 0:
    fail(f"size={size!r}", "must be a positive int")
  if split not in ("train", "test"):
    fail(f"split={split!r}", "use 'train' or 'test'")
  if not 1 <= min_ops <= max_ops:
    fail(f"min_ops={min_ops}, max_ops={max_ops}", "need 1 <= min_ops <= max_ops")
  if not 0 <= min_start <= max_start <= max_value:
    fail(f"min_start={min_start}, max_start={max_start}",
         f"need 0 <= min_start <= max_start <= max_value={max_value}")
  if max_operand < 1:
    fail(f"max_operand={max_operand}", "must be >= 1")
  if len(op_weights) != len(OPS) or min(op_weights) < 0 or not sum(op_weights):
    fail(f"op_weights={tuple(op_weights)}",
         f"give {len(OPS)} non-negative weights for {OPS}, not all 0")
  if not 0.0 <= float(mul_as_add) <= 1.0:
    fail(f"mul_as_add={mul_as_add!r}", "give a bool or a probability in [0, 1]")
  if test_modulus < 2:
    fail(f"test_modulus={test_modulus}", "must be >= 2 (one key in test_modulus is test)")
