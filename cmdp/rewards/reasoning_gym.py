"""Task reward for reasoning-gym problems, scored by each task's own verifier.

reasoning-gym entries are dicts `{"question", "answer", "metadata"}`; a task's dataset object
scores an answer string with `ds.score_answer(answer, entry)` in [0, 1]. Some verifiers give
partial credit to wrong answers (`basic_arithmetic` pays len(gold)/len(answer) when the gold
string is a substring, `gsm_symbolic` pays 0.01 for any wrong number), so by default the
score is made binary: 1.0 only when the verifier pays in full.
"""
from __future__ import annotations

import decimal
import functools
from typing import Any, Mapping, NamedTuple

from cmdp.rewards import math_answer
from cmdp.text import last_boxed

MAX_ANSWER_CHARS = 1_000  # extracted answers are cut to this length before scoring


class TaskScore(NamedTuple):
  """Outcome of scoring one completion on a reasoning-gym entry."""
  score: float  # in [0, 1]
  extracted: str | None  # the answer string that earned `score`
  reason: str  # "verifier", or why scoring failed (for logging)


def _freeze(value: Any) -> Any:
  """A hashable copy of nested task kwargs (lists -> tuples, dicts -> sorted item tuples)."""
  if isinstance(value, Mapping):
    return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
  if isinstance(value, (list, tuple)):
    return tuple(_freeze(v) for v in value)
  return value


def _thaw_kwargs(frozen: tuple) -> dict[str, Any]:
  return {k: v for k, v in frozen}


@functools.lru_cache(maxsize=128)
def _cached_dataset(name: str, frozen_kwargs: tuple):
  import reasoning_gym  # pylint: disable=g-import-not-at-top
  return reasoning_gym.create_dataset(name, size=1, seed=0, **_thaw_kwargs(frozen_kwargs))


def get_dataset(name: str, task_kwargs: Mapping[str, Any] | None = None):
  """The reasoning-gym dataset object used for scoring, cached per (name, task_kwargs).

  Args:
    name: registered reasoning-gym task name, e.g. "basic_arithmetic".
    task_kwargs: the task's config kwargs (without `size` and `seed`, which scoring ignores).
  """
  kwargs = {k: v for k, v in (task_kwargs or {}).items() if k not in ("size", "seed")}
  return _cached_dataset(name, _freeze(kwargs))


def extract_final_answer(completion: str) -> str | None:
  """The answer part of a completion for a reasoning-gym task.

  The content of the last `#### ...` line if there is one, else of the last `\\boxed{...}`,
  else the last non-blank line. Cut to `MAX_ANSWER_CHARS`.
  """
  if not isinstance(completion, str):
    return None
  tail = completion[-math_answer.MAX_COMPLETION_CHARS:]
  pos = tail.rfind("####")
  if pos >= 0:
    line = tail[pos + 4:].lstrip(" \t#").split("\n", 1)[0].strip()
    if line:
      return line[:MAX_ANSWER_CHARS]
  boxed = last_boxed(tail)
  if boxed:
    return boxed[:MAX_ANSWER_CHARS]
  lines = tail.rstrip().rsplit("\n", 1)
  last = lines[-1].strip() if lines else ""
  return last[:MAX_ANSWER_CHARS] or None


def _canonical_number(text: str) -> str | None:
  """`"$1,000."` -> `"1000"`, `"2.50"` -> `"2.5"`; None if not a number with a finite decimal."""
  parsed = math_answer.parse_number(text)
  if parsed is None or parsed[1]:
    return None
  value = parsed[0]
  if value.denominator == 1:
    return str(value.numerator)
  den = value.denominator
  for p in (2, 5):
    while den % p == 0:
      den //= p
  if den != 1:
    return None
  return format(decimal.Decimal(value.numerator) / decimal.Decimal(value.denominator), "f")


def answer_candidates(answer: str) -> list[str]:
  """Spellings of one answer tried against the verifier: as written, and as a plain number.

  String-matching verifiers would reject `"$1,000."` for gold `"1000"`; the canonical
  number (and the part after a final `=`, as in `"5 - 3 = 2"`, and the last number of a
  sentence, as in `"So the sum is 14."`: the fallback GSM8K answers get) is tried too.
  """
  out = [answer]
  tails = [answer] + ([answer.rsplit("=", 1)[1]] if "=" in answer else [])
  last_number = math_answer.extract_answer(answer)
  if last_number:
    tails.append(last_number)
  for text in tails:
    canon = _canonical_number(text)
    if canon is not None and canon not in out:
      out.append(canon)
  return out


def reasoning_gym_score(completion: str, entry: Mapping[str, Any], name: str,
                        task_kwargs: Mapping[str, Any] | None = None, *,
                        partial_credit: bool = False) -> TaskScore:
  """Scores a completion with the task's own `score_answer`; never raises.

  Args:
    completion: decoded model output.
    entry: the reasoning-gym entry (`question`, `answer`, `metadata`).
    name: the task name, e.g. "basic_arithmetic".
    task_kwargs: the kwargs the entry's dataset was created with.
    partial_credit: keep the verifier's fractional score; by default only a full score
      (>= 1) counts, as 1.0, and anything else is 0.0.

  Returns:
    `TaskScore(score, extracted, reason)`.
  """
  answer = extract_final_answer(completion)
  if answer is None:
    return TaskScore(0.0, None, "no answer found")
  try:
    dataset = get_dataset(name, task_kwargs)
    best, best_answer = 0.0, answer
    for candidate in answer_candidates(answer):
      score = float(dataset.score_answer(candidate, dict(entry)))
      if score > best:
        best, best_answer = score, candidate
  except Exception as e:  # pylint: disable=broad-except
    return TaskScore(0.0, answer, f"verifier error: {type(e).__name__}: {str(e)[:200]}")
  best = min(max(best, 0.0), 1.0)
  if not partial_credit:
    best = 1.0 if best >= 1.0 else 0.0
  return TaskScore(best, best_answer, "verifier")
