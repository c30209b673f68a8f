"""reasoning-gym tasks as `Example`s.

reasoning-gym generates item `i` of a dataset created with seed `s` from `Random(s + i)`, so
a dataset of `size` items uses the RNG seeds `[s, s + size)`. Train and test sets are kept
apart twice: by disjoint seed ranges (the test split of seed `s` starts at
`s + TEST_SEED_OFFSET`, `split_seed`), and by the question itself: a hash of its text puts
every question in one split (`question_split`, `TEST_SHARE` of them in test). Disjoint seeds
alone do not make the questions disjoint when a task's problem space is small (2-term sums
of one or two digits: 2,000 training draws cover most of the one-digit ones), and dropping
the test questions seen in training would leave a test set harder than the training one.
(Where a few questions carry much of a task's probability, as the one-digit sums do, which
of them land in test still shifts the test distribution a little: compare models on the
same test set, as evaluation does.)
"""
from __future__ import annotations

import hashlib
from typing import Any

from cmdp import sources
from cmdp.data.example import Example

TEST_SEED_OFFSET = 1_000_000_000  # test seeds start here above the train seed


TEST_SHARE = 0.2  # share of a task's questions that belong to the test split


def question_split(question: str) -> str:
  """"test" for `TEST_SHARE` of all questions, "train" for the rest, by a hash of the text."""
  bucket = int(hashlib.sha256(question.encode()).hexdigest()[:8], 16) / 16**8
  return "test" if bucket < TEST_SHARE else "train"


def split_seed(seed: int, split: str) -> int:
  """The generator seed for `split` ("train" -> seed, "test" -> seed + TEST_SEED_OFFSET)."""
  if split == "train":
    return seed
  if split == "test":
    return seed + TEST_SEED_OFFSET
  raise ValueError(f"split={split!r}: reasoning-gym tasks have splits 'train' and 'test'.")


def load_split(name: str, size: int, seed: int, split: str,
               **task_kwargs: Any) -> list[Example]:
  """`size` examples of the task `name` whose questions belong to `split`
  (`question_split`), drawn from the split's seed range (`split_seed`) in order."""
  want = []
  start, chunk = split_seed(seed, split), max(2 * size, 64)
  for _ in range(50):
    batch = load_reasoning_gym(name, chunk, start, **task_kwargs)
    want += [ex for ex in batch if question_split(ex.question) == split]
    if len(want) >= size:
      return want[:size]
    start += chunk
  raise ValueError(f"load_reasoning_gym({name!r}): only {len(want)} of {50 * chunk} draws "
                   f"have {split} questions; the task has too few distinct questions for "
                   f"size={size} (use more terms or digits, or a smaller size).")


def load_reasoning_gym(name: str, size: int, seed: int, **task_kwargs: Any) -> list[Example]:
  """Generates `size` examples of the reasoning-gym task `name`.

  Args:
    name: a registered task, e.g. "basic_arithmetic", "chain_sum", "gsm_symbolic".
    size: number of examples.
    seed: generator seed (use `split_seed` for train / test sets).
    **task_kwargs: the task's config fields, e.g. for basic_arithmetic `min_terms=2,
      max_terms=2, min_digits=1, max_digits=1, operators=("+", "-")`.

  Returns:
    Examples with `source="reasoning_gym/<name>"`, `entry` the raw entry (for the verifier),
    `task_kwargs` the kwargs, `solution` the entry's `metadata["answer_cot"]` when the task
    provides one (gsm_symbolic), else None.

  Raises:
    ValueError: unknown task name, bad size, or kwargs the task's config rejects.
  """
  import reasoning_gym  # pylint: disable=g-import-not-at-top
  if not isinstance(size, int) or size <= 0:
    raise ValueError(f"load_reasoning_gym({name!r}): size={size!r} must be a positive int.")
  for reserved in ("size", "seed"):
    task_kwargs.pop(reserved, None)
  try:
    dataset = reasoning_gym.create_dataset(name, size=size, seed=seed, **task_kwargs)
  except (ValueError, TypeError, AssertionError) as e:
    raise ValueError(
        f"load_reasoning_gym: cannot create task {name!r} with kwargs {task_kwargs}: {e}. "
        "Check the task name (reasoning_gym.factory.DATASETS) and its config fields.") from e
  examples, source = [], sources.reasoning_gym(name)
  for i, entry in enumerate(dataset):
    metadata = entry.get("metadata") or {}
    solution = metadata.get("answer_cot")
    examples.append(Example(
        uid=f"{source}/{seed}/{i}", question=str(entry["question"]),
        answer=str(entry["answer"]), solution=solution if isinstance(solution, str) else None,
        source=source, entry=entry, task_kwargs=dict(task_kwargs)))
  return examples
