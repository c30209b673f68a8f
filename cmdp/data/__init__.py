"""Data: task examples (GSM8K, MATH, reasoning-gym), chat prompts, a resumable batch iterator.

Every task is turned into a list of `Example`s; `load_task` picks the loader from a config
string or dict; `PromptIterator` yields deterministic, resumable batches of them;
`cmdp.data.prompts` turns their questions into left-padded token arrays.
"""
from __future__ import annotations

from typing import Any, Mapping

from cmdp import sources
from cmdp.data.example import Example
from cmdp.data.arith import load_arith
from cmdp.data.gsm8k import load_gsm8k
from cmdp.data.iterator import PromptIterator, split_examples
from cmdp.data.math_dataset import DEFAULT_MATH_SYSTEM_PROMPT, load_math
from cmdp.data.prompts import (DEFAULT_SYSTEM_PROMPT, PROMPT_FORMATS, build_prompt,
                               common_prefix, encode_prompts, encode_sft, encode_sft_batch)
from cmdp.data import reasoning_gym_tasks
from cmdp.data.reasoning_gym_tasks import TEST_SEED_OFFSET, load_reasoning_gym, split_seed

DEFAULT_REASONING_GYM_SIZE = 1_000  # examples per split when a spec gives no `size`
_FILE_TASK_OPTIONS = {sources.GSM8K: ("strip_calculator",), sources.MATH: ("subjects", "levels")}


def _file_task_options(kind: str, task: str, options: dict[str, Any]) -> dict[str, Any]:
  """The loader options of a fixed-file task ("gsm8k" or "math"), without `size` / `seed`.

  Raises:
    ValueError: naming the task, for an option its loader does not take.
  """
  allowed = _FILE_TASK_OPTIONS[kind]
  options = {k: v for k, v in options.items() if k not in ("size", "seed")}
  unknown = sorted(set(options) - set(allowed))
  if unknown:
    takes = ", ".join(f"'{name}'" for name in ("split", "limit", *allowed)[:-1])
    raise ValueError(f"load_task({task!r}): unknown option(s) {unknown}; {kind} takes "
                     f"{takes} and '{allowed[-1]}' ('size' and 'seed' are ignored).")
  return options


def load_task(spec: str | Mapping[str, Any], *, split: str | None = None,
              **options: Any) -> list[Example]:
  """Loads the examples a config names.

  Args:
    spec: `"gsm8k:<dir, file or hub id>"`, e.g. `"gsm8k:/work/shared/data/gsm8k"` or
      `"gsm8k:openai/gsm8k"`; `"math:<dir, file or hub id>"`, e.g. `"math:/data/MATH"` or
      `"math:HuggingFaceH4/MATH-500"` (see `load_math`); or `"reasoning_gym:<task>"`, e.g.
      `"reasoning_gym:basic_arithmetic"`; or a dict (or ConfigDict) with that string under
      `"task"` plus options: `split`, `limit` (keep the first N), for GSM8K
      `strip_calculator`, for MATH `subjects` and `levels`, for reasoning-gym `size`
      (default 1,000), `seed` (default 0) and any task config field (e.g. `max_terms=2`).
    split: "train" or "test"; overrides the spec's `split` (default "train"). reasoning-gym
      splits use disjoint seed ranges and disjoint questions (`split_seed`,
      `reasoning_gym_tasks.question_split`).
    **options: more options, merged over the spec's (e.g. `size=`, `seed=`, task fields).
      `size` and `seed` are ignored by GSM8K and MATH, which have fixed files (use `limit`).

  Returns:
    The examples, in file / generation order.

  Raises:
    ValueError: an unknown task kind, a missing location, or an option the task does not take.
  """
  if hasattr(spec, "to_dict"):
    spec = spec.to_dict()
  options = {**(dict(spec) if isinstance(spec, Mapping) else {"task": spec}), **options}
  task = options.pop("task", None)
  # the arith generator needs no target
  task = f"{sources.ARITH}:" if task == sources.ARITH else task
  if not isinstance(task, str) or ":" not in task:
    raise ValueError(f"load_task: task={task!r}; write 'gsm8k:<path or hub id>', "
                     "'math:<path or hub id>' or 'reasoning_gym:<task name>'.")
  kind, target = (part.strip() for part in task.split(":", 1))
  split = split or options.pop("split", "train")
  options.pop("split", None)
  limit = options.pop("limit", None)
  if kind in _FILE_TASK_OPTIONS:
    loader = load_gsm8k if kind == sources.GSM8K else load_math
    examples = loader(target, split, **_file_task_options(kind, task, options))
  elif kind == sources.REASONING_GYM:
    size = options.pop("size", DEFAULT_REASONING_GYM_SIZE)
    seed = options.pop("seed", 0)
    examples = reasoning_gym_tasks.load_split(target, size, seed, split, **options)
  elif kind == sources.ARITH:  # generated word problems (cmdp.data.arith): size, seed, its kwargs
    examples = load_arith(options.pop("size", DEFAULT_REASONING_GYM_SIZE),
                          split_seed(options.pop("seed", 0), split), split, **options)
  else:
    raise ValueError(f"load_task: unknown task kind {kind!r} in {task!r}; use 'gsm8k', "
                     "'math' or 'reasoning_gym'.")
  if limit is not None:
    if not isinstance(limit, int) or limit <= 0:
      raise ValueError(f"load_task({task!r}): limit={limit!r} must be a positive int.")
    examples = examples[:limit]
  return examples


__all__ = [
    "DEFAULT_MATH_SYSTEM_PROMPT", "DEFAULT_SYSTEM_PROMPT", "Example", "PROMPT_FORMATS",
    "PromptIterator",
    "TEST_SEED_OFFSET", "build_prompt", "common_prefix", "encode_prompts", "encode_sft", "encode_sft_batch",
    "load_arith", "load_gsm8k", "load_math", "load_reasoning_gym", "load_task", "split_examples",
    "split_seed",
]
