"""`Example`, the one problem every task loader returns (`cmdp.data` re-exports it)."""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from cmdp import sources


@dataclasses.dataclass(frozen=True)
class Example:
  """One problem: what the model is asked and what counts as a right answer."""
  uid: str  # unique and stable, e.g. "gsm8k/test/17" or "reasoning_gym/chain_sum/0/5"
  question: str  # the problem text shown to the model
  answer: str  # gold final answer, e.g. "18" (GSM8K, commas removed) or "\\frac{\\sqrt3}{2}"
  solution: str | None = None  # reference worked solution (GSM8K: ends "#### <answer>";
  # MATH: contains "\\boxed{<answer>}"), or None
  # "gsm8k", "math", "arith" or "reasoning_gym/<task name>" (cmdp.sources): picks the reward
  source: str = sources.GSM8K
  entry: Mapping[str, Any] | None = None  # reasoning-gym: raw entry, passed to its verifier;
  # MATH: {"subject", "level", "unique_id"}
  task_kwargs: Mapping[str, Any] | None = None  # reasoning-gym config kwargs of the entry
