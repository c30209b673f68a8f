"""Format rewards: a well-formed `#### <number>` final line (GSM8K) or `\\boxed{}` (MATH)."""
from __future__ import annotations

import re

from cmdp.rewards.math_symbolic import MAX_MATH_ANSWER_CHARS
from cmdp.text import last_boxed

# "#### 42", "#### -3.5", "#### 1,234": a bare number, no units, no currency, no LaTeX.
_FINAL_LINE_RE = re.compile(r"####[ \t]*[-\u2212]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?[ \t]*")
_MAX_LINE_CHARS = 128


def format_reward(completion: str) -> float:
  """1.0 if the last non-blank line of `completion` is exactly `#### <number>`, else 0.0.

  The prompt (`cmdp.data.prompts`) asks for this line. Meant as a small shaping bonus
  (`format_weight` in `cmdp.rewards.score_completions`), never as the task reward.

  Args:
    completion: decoded model output (special tokens removed).

  Returns:
    1.0 or 0.0. Never raises; runs in time linear in the last line's length (capped).
  """
  if not isinstance(completion, str):
    return 0.0
  tail = completion[-4 * _MAX_LINE_CHARS:].rstrip()
  last_line = tail.rsplit("\n", 1)[-1].strip()
  if len(last_line) > _MAX_LINE_CHARS:
    return 0.0
  return 1.0 if _FINAL_LINE_RE.fullmatch(last_line) else 0.0


_BOXED_TAIL_CHARS = 2_000  # the boxed answer must lie in the completion's last characters


def boxed_format_reward(completion: str) -> float:
  """1.0 if the completion's last `\\boxed{...}` is balanced, non-empty and near its end.

  The MATH prompt (`cmdp.data.DEFAULT_MATH_SYSTEM_PROMPT`) asks for the final answer in
  `\\boxed{}`. A shaping bonus only, like `format_reward`.

  Args:
    completion: decoded model output (special tokens removed).

  Returns:
    1.0 or 0.0: whether `last_boxed` finds an answer in the last `_BOXED_TAIL_CHARS`
    characters. Never raises; linear time in that tail.
  """
  if not isinstance(completion, str):
    return 0.0
  tail = completion[-_BOXED_TAIL_CHARS:]
  return 1.0 if last_boxed(tail, max_chars=MAX_MATH_ANSWER_CHARS) else 0.0
