"""The held-out problems: a task's test split cut in two parts by a hash of the question,
one evaluated (`"test"`), one that calibrates the budget (`"calibration"`).

Both parts are drawn the same way from the same distribution: the test split's draws (its
own seeds, its own questions, disjoint from the training split's: `load_task`), each draw
kept by the part its question hashes to (`part_of`, half of the questions each), then
deduplicated by question text (first occurrence kept). `size` draws of either part are two
samples of one process, so a budget calibrated at a quantile of the calibration part's costs
reads as that quantile on the evaluated part, up to sampling error; the training split's
prompts (another set of questions, with its repeats) are not a sample of it.

A task whose problem space is small repeats questions: 200 draws of 2-term sums of one or two
digits are about 110 distinct questions (half the draws are one-digit sums). Evaluation and
calibration count each question once (`distinct`); intervals count questions, not draws
(`cmdp.evaluation.stats`).
"""
from __future__ import annotations

import hashlib
from typing import Any, Sequence

PARTS = ("test", "calibration")
CALIBRATION_SHARE = 0.5  # share of the test split's questions that calibrate
_MAX_DOUBLINGS = 8  # draws tried for one part: size x 2 up to size x 2^8


def part_of(question: str) -> str:
  """"calibration" for `CALIBRATION_SHARE` of all questions, "test" for the rest, by a hash
  of the text (salted apart from the train / test hash, so it cuts the test split evenly)."""
  digest = hashlib.sha256(("heldout-part/" + question).encode()).hexdigest()
  return "calibration" if int(digest[:8], 16) / 16**8 < CALIBRATION_SHARE else "test"


def distinct(examples: Sequence) -> tuple[list, int]:
  """`(examples with each question text once, first occurrence kept, in order; how many
  repeats were dropped)`."""
  seen, kept = set(), []
  for ex in examples:
    if ex.question not in seen:
      seen.add(ex.question)
      kept.append(ex)
  return kept, len(examples) - len(kept)


def load_part(spec, part: str, size: int, seed: int, **options: Any) -> tuple[list, int]:
  """The first `size` draws of the test split of `spec` (`cmdp.data.load_task`, with
  `seed` and `options`) whose question belongs to `part`, deduplicated (`distinct`):
  `(examples, repeats dropped)`. A fixed-file task (GSM8K, MATH) gives its test file's
  problems of `part`, the first `size` of them.

  Raises:
    ValueError: an unknown part, or a task whose test split has no question of `part`.
  """
  from cmdp.data import load_task  # pylint: disable=g-import-not-at-top
  if part not in PARTS:
    raise ValueError(f"load_part: part={part!r}; use one of {PARTS}.")
  if not isinstance(size, int) or size <= 0:
    raise ValueError(f"load_part: size={size!r} must be a positive int.")
  kept, draws = [], size
  for _ in range(_MAX_DOUBLINGS + 1):
    draws *= 2
    try:
      examples = load_task(spec, split="test", size=draws, seed=seed, **options)
    except ValueError:  # a small problem space: no more draws of this split
      if kept:
        break
      raise
    kept = [ex for ex in examples if part_of(ex.question) == part]
    if len(kept) >= size or len(examples) < draws:  # enough, or a file with no more
      break
  if not kept:
    raise ValueError(f"load_part({spec!r}): no question of the {part!r} part in "
                     f"{len(examples)} test problems.")
  return distinct(kept[:size])
