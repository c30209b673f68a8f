"""The held-out problems: a task's test split cut in two parts drawn the same way, one
evaluated (`"test"`), one that calibrates the budget (`"calibration"`).

The parts are made from the first draws of the test split (its own seeds and questions,
disjoint from the training split's: `load_task`), as many as fill both (`load_parts`):
deduplicated by question text (`distinct`), its distinct questions ranked by how often they
were drawn, taken in pairs down the ranking, and a hash of each pair's two texts sending one
of them to each part (`pair_parts`). The parts are disjoint, and disjoint from training.

Why pairs. A task whose problem space is small repeats questions, and a few questions carry
much of its probability: 200 draws of 2-term sums of one or two digits are about 110
distinct questions, half the draws one-digit sums. The two questions of a pair were drawn
about as often, so each part gets half of the likely questions and half of the rare ones:
the parts are two samples of one distribution. (Cut by a hash of each question alone, the
main job's 23 one-digit test sums fell 9 to one part and 14 to the other: 8% of one part's
distinct questions, 17% of the other's.) A budget calibrated at a quantile of one part's
costs then reads as that quantile on the other, up to sampling error; the training prompts,
with their repeats and their other questions, are not such a sample.

Evaluation and calibration count each question once; intervals count questions, not
samples (`cmdp.evaluation.stats`).
"""
from __future__ import annotations

import collections
import hashlib
from typing import Any, Sequence

_MAX_DOUBLINGS = 6  # draws tried: 2 max(sizes), doubled up to 6 times


def distinct(examples: Sequence) -> tuple[list, int]:
  """`(examples with each question text once, first occurrence kept, in order; how many
  repeats were dropped)`."""
  seen, kept = set(), []
  for ex in examples:
    if ex.question not in seen:
      seen.add(ex.question)
      kept.append(ex)
  return kept, len(examples) - len(kept)


def pair_parts(draws: Sequence) -> tuple[list, list, int]:
  """`(test part, calibration part, repeats dropped)` of a list of draws: its distinct
  questions ordered by how often they were drawn (most first; ties by first occurrence),
  taken in pairs, and a hash of each pair's two question texts (sorted, so a function of the
  pair alone) sending one to each part; an unpaired last question is left out. Each part
  keeps the order of first occurrence."""
  kept, dropped = distinct(draws)
  first = {ex.question: i for i, ex in enumerate(kept)}
  counts = collections.Counter(ex.question for ex in draws)
  ranked = sorted(kept, key=lambda ex: (-counts[ex.question], first[ex.question]))
  test, calibration = [], []
  for pair in zip(ranked[0::2], ranked[1::2]):
    a, b = sorted(pair, key=lambda ex: ex.question)
    key = "heldout-pair/" + a.question + "\0" + b.question
    if int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) % 2:
      a, b = b, a
    test.append(a)
    calibration.append(b)
  order = lambda part: sorted(part, key=lambda ex: first[ex.question])
  return order(test), order(calibration), dropped


def load_parts(spec, test_size: int, calibration_size: int, seed: int,
               **options: Any) -> tuple[list, list, int]:
  """`(test part, calibration part, repeats dropped)`: the first `test_size` and
  `calibration_size` questions (in order of first occurrence) of the parts (`pair_parts`)
  of the first `N` draws of the test split of `spec` (`cmdp.data.load_task` with `seed` and
  `options`), `N` the first of `2 max(test_size, calibration_size)` doubled that fills both
  parts; a fixed-file task (GSM8K, MATH) gives its whole test file, and a task whose problem
  space runs out, what it has. Equal sizes give two parts made alike.

  Raises:
    ValueError: a size that is not a positive int, or a test split with fewer than two
      distinct questions.
  """
  from cmdp.data import load_task  # pylint: disable=g-import-not-at-top
  for name, size in (("test_size", test_size), ("calibration_size", calibration_size)):
    if not isinstance(size, int) or size <= 0:
      raise ValueError(f"load_parts: {name}={size!r} must be a positive int.")
  n, parts = 2 * max(test_size, calibration_size), None
  for _ in range(_MAX_DOUBLINGS + 1):
    try:
      draws = load_task(spec, split="test", size=n, seed=seed, **options)
    except ValueError:  # a small problem space: no more draws of the split
      if parts is None:
        raise
      break
    parts = pair_parts(draws)
    if (len(parts[0]) >= test_size and len(parts[1]) >= calibration_size) or len(draws) < n:
      break  # both parts full, or a file with no more problems
    n *= 2
  test, calibration, dropped = parts
  if not test:
    raise ValueError(f"load_parts({spec!r}): the test split has fewer than two distinct "
                     "questions; one is needed for each part.")
  return test[:test_size], calibration[:calibration_size], dropped
