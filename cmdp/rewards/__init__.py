"""Task rewards: final-answer checking for GSM8K and MATH, and reasoning-gym verifiers.

`score_completions` is the batch entry point used by rollouts: one float per completion,
dispatched on `Example.source` (the names of `cmdp.sources`): "math" -> last `\\boxed{}`
answer, symbolic equality (`math_symbolic`); "reasoning_gym/<name>" -> that task's
verifier; "gsm8k", "arith" or any other source -> numeric answer check (`math_answer`).
Scoring never raises on model output and runs in bounded time in any thread; failures score
0 and their reason is kept in `Score.reason`.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple, Sequence

import numpy as np

from cmdp import sources
from cmdp.rewards.format import boxed_format_reward, format_reward
from cmdp.rewards.math_answer import (Check, answers_match, check_answer, extract_answer,
                                      math_reward, parse_number)
from cmdp.rewards.math_symbolic import (check_math_answer, extract_math_answer,
                                        math_symbolic_reward, normalize_math_answer)
from cmdp.rewards.reasoning_gym import (TaskScore, extract_final_answer, get_dataset,
                                        reasoning_gym_score)
from cmdp.text import last_boxed

if TYPE_CHECKING:
  from cmdp.data import Example


class Score(NamedTuple):
  """Reward of one completion, with its parts (for logging)."""
  reward: float  # task + format_weight * format
  task: float  # 1.0 / 0.0 (or the verifier's partial credit when asked for)
  format: float  # `boxed_format_reward` for MATH, else `format_reward`; 1.0 / 0.0
  extracted: str | None  # the final answer read from the completion
  reason: str  # how the task reward was decided, or why it failed


def score_one(completion: str, example: "Example", *, format_weight: float = 0.0,
              partial_credit: bool = False) -> Score:
  """Scores one completion against its example (see `score_completions`)."""
  source = example.source
  name = sources.reasoning_gym_task(source)
  if name is not None:
    result = reasoning_gym_score(completion, example.entry or {}, name, example.task_kwargs,
                                 partial_credit=partial_credit)
    task, extracted, reason = result.score, result.extracted, result.reason
  elif source == sources.MATH:
    extracted = extract_math_answer(completion)
    check = check_math_answer(extracted, example.answer)
    task, reason = (1.0 if check.correct else 0.0), check.reason
  else:
    extracted = extract_answer(completion)
    check = check_answer(extracted, example.answer)
    task, reason = (1.0 if check.correct else 0.0), check.reason
  format_fn = boxed_format_reward if source == sources.MATH else format_reward
  fmt = format_fn(completion) if format_weight else 0.0
  return Score(task + format_weight * fmt, task, fmt, extracted, reason)


def score_details(completions: Sequence[str], examples: Sequence["Example"], *,
                  format_weight: float = 0.0, partial_credit: bool = False) -> list[Score]:
  """Per-completion `Score`s; arguments as in `score_completions`."""
  if len(completions) != len(examples):
    raise ValueError(f"score_completions: got {len(completions)} completions for "
                     f"{len(examples)} examples; pass one example per completion (repeat each "
                     "example for every sample of a group).")
  return [score_one(c, e, format_weight=format_weight, partial_credit=partial_credit)
          for c, e in zip(completions, examples)]


def score_completions(completions: Sequence[str], examples: Sequence["Example"], *,
                      format_weight: float = 0.0, partial_credit: bool = False) -> np.ndarray:
  """Sequence-level task reward R(x, y) for a batch.

  Args:
    completions: B decoded completions (special tokens removed).
    examples: B `cmdp.data.Example`s, `examples[i]` being the prompt of `completions[i]`.
    format_weight: weight of the format reward added to the task reward (0 disables it):
      `boxed_format_reward` for MATH examples, `format_reward` (`#### <number>`) otherwise.
    partial_credit: for reasoning-gym tasks, keep the verifier's fractional score instead of
      1.0 for a full score and 0.0 otherwise.

  Returns:
    float32 array [B]: task reward (1/0) + format_weight * format reward (1/0).
  """
  scores = score_details(completions, examples, format_weight=format_weight,
                         partial_credit=partial_credit)
  return np.asarray([s.reward for s in scores], dtype=np.float32).reshape(len(scores))


__all__ = [
    "Check", "Score", "TaskScore", "answers_match", "boxed_format_reward",
    "check_answer", "check_math_answer", "extract_answer", "extract_final_answer",
    "extract_math_answer", "format_reward", "get_dataset", "last_boxed", "math_reward",
    "math_symbolic_reward", "normalize_math_answer", "parse_number", "reasoning_gym_score",
    "score_completions", "score_details", "score_one",
]
