"""The task source names: `Example.source` says which task a problem came from, and so which
reward checks a completion of it.

The loaders (`cmdp.data`) write these names into their examples and the rewards
(`cmdp.rewards.score_one`) dispatch on them; both take them from here. A task string of a
config (`cmdp.data.load_task`, e.g. `"gsm8k:openai/gsm8k"`) starts with the same names.
"""
from __future__ import annotations

GSM8K = "gsm8k"  # GSM8K files: the numeric '#### n' answer check
MATH = "math"  # MATH: the last \boxed{} answer, compared symbolically
ARITH = "arith"  # generated word problems (cmdp.data.arith): the GSM8K answer check
REASONING_GYM = "reasoning_gym"  # a reasoning-gym task: "reasoning_gym/<task name>"
REASONING_GYM_PREFIX = REASONING_GYM + "/"


def reasoning_gym(name: str) -> str:
  """The source of the reasoning-gym task `name` (e.g. "reasoning_gym/chain_sum")."""
  return REASONING_GYM_PREFIX + name


def reasoning_gym_task(source: str) -> str | None:
  """The reasoning-gym task name of `source`; None for a source of another kind."""
  return source[len(REASONING_GYM_PREFIX):] if source.startswith(REASONING_GYM_PREFIX) else None
