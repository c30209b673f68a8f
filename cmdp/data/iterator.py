"""Deterministic, resumable batches of examples, and a train / test split helper.

Epoch `e` visits the examples in the order `np.random.default_rng((seed, e)).permutation(n)`
(or in file order with `shuffle=False`). The iterator's whole position is `(epoch, index)`,
so a checkpoint that stores `state()` and calls `restore()` resumes with exactly the batches
an uninterrupted run would have seen.

In a multi-process run every process walks the same global order and takes its own part of
each global batch (`shard=(jax.process_index(), jax.process_count())`): process i gets the
i-th of `count` equal contiguous blocks, so the processes' parts, concatenated in process
order, are exactly the batch one process would have seen. The position is global, so
`state()` is the same on every process.
"""
from __future__ import annotations

from typing import Any, Generic, Mapping, Sequence, TypeVar

import numpy as np

T = TypeVar("T")


class PromptIterator(Generic[T]):
  """Yields lists of `batch_size` examples, epoch after epoch.

  Args:
    examples: the examples (any sequence; usually `cmdp.data.Example`s).
    batch_size: examples per batch.
    seed: shuffling seed.
    shuffle: permute each epoch (else keep the given order).
    drop_last: skip an epoch's final partial batch so every batch has `batch_size` examples
      (static shapes); otherwise the final batch is short.
    num_epochs: stop after this many epochs; None iterates forever.
    shard: `(index, count)`: yield only block `index` of `count` equal contiguous blocks of
      each global batch of `batch_size` examples (one per process); `(0, 1)` yields it whole.
  """

  def __init__(self, examples: Sequence[T], batch_size: int, seed: int, *, shuffle: bool = True,
               drop_last: bool = True, num_epochs: int | None = None,
               shard: tuple[int, int] = (0, 1)):
    if not len(examples):
      raise ValueError("PromptIterator: no examples given.")
    if batch_size <= 0 or (drop_last and batch_size > len(examples)):
      raise ValueError(f"PromptIterator: batch_size={batch_size} must be in [1, "
                       f"{len(examples)}] (the number of examples) when drop_last=True.")
    self.examples = list(examples)
    self.batch_size = int(batch_size)
    self.seed = int(seed)
    self.shuffle = shuffle
    self.drop_last = drop_last
    self.num_epochs = num_epochs
    index, count = (int(v) for v in shard)
    if count < 1 or not 0 <= index < count:
      raise ValueError(f"PromptIterator: shard={tuple(shard)} must be (index, count) with "
                       "0 <= index < count.")
    if count > 1 and (self.batch_size % count or not drop_last):
      raise ValueError(f"PromptIterator: a batch of {self.batch_size} examples cannot be split "
                       f"into {count} equal parts (shard={tuple(shard)}); use a batch size "
                       "divisible by the number of processes, with drop_last=True.")
    self.shard = (index, count)
    self._epoch, self._index = 0, 0
    self._order_epoch, self._order = -1, None

  @property
  def batches_per_epoch(self) -> int:
    n, b = len(self.examples), self.batch_size
    return n // b if self.drop_last else -(-n // b)

  def _epoch_order(self) -> np.ndarray:
    if self._order_epoch != self._epoch:
      n = len(self.examples)
      self._order = (np.random.default_rng((self.seed, self._epoch)).permutation(n)
                     if self.shuffle else np.arange(n))
      self._order_epoch = self._epoch
    return self._order

  def next_batch(self) -> list[T]:
    """The next batch (this shard's part of it); raises StopIteration after `num_epochs`
    epochs."""
    n = len(self.examples)
    if self._index >= n or (self.drop_last and self._index + self.batch_size > n):
      self._epoch, self._index = self._epoch + 1, 0
    if self.num_epochs is not None and self._epoch >= self.num_epochs:
      raise StopIteration
    order = self._epoch_order()
    picked = order[self._index:self._index + self.batch_size]
    self._index += len(picked)
    index, count = self.shard
    part = len(picked) // count
    return [self.examples[i] for i in picked[index * part:(index + 1) * part]]

  def __iter__(self) -> "PromptIterator[T]":
    return self

  def __next__(self) -> list[T]:
    return self.next_batch()

  def state(self) -> dict[str, int]:
    """The position: `{"epoch": e, "index": i}`, i = examples of epoch e already served."""
    return {"epoch": self._epoch, "index": self._index}

  def restore(self, state: Mapping[str, Any]) -> None:
    """Continues from a `state()`; the same examples, batch size and seed must be used."""
    try:
      epoch, index = int(state["epoch"]), int(state["index"])
    except (KeyError, TypeError, ValueError) as e:
      raise ValueError(f"PromptIterator.restore: state={state!r} needs integer 'epoch' and "
                       "'index' (as returned by state()).") from e
    if epoch < 0 or not 0 <= index <= len(self.examples):
      raise ValueError(f"PromptIterator.restore: state={dict(state)} is out of range for "
                       f"{len(self.examples)} examples; was it saved for other data?")
    self._epoch, self._index = epoch, index


def split_examples(examples: Sequence[T], test_fraction: float,
                   seed: int) -> tuple[list[T], list[T]]:
  """Splits examples at random into disjoint train and test lists (each in input order).

  For data without its own splits. GSM8K has its own train / test files; reasoning-gym
  tasks use disjoint generator seeds instead (`cmdp.data.reasoning_gym_tasks`).

  Args:
    examples: the examples.
    test_fraction: share of examples in the test list, in (0, 1); the test list has
      `round(test_fraction * n)` of them.
    seed: `np.random.default_rng(seed)` picks the test examples.

  Returns:
    `(train, test)`.
  """
  n = len(examples)
  n_test = int(round(test_fraction * n))
  if not 0 < test_fraction < 1 or not 0 < n_test < n:
    raise ValueError(f"split_examples: test_fraction={test_fraction} of {n} examples leaves "
                     "an empty train or test list; use a fraction in (0, 1) and more examples.")
  is_test = np.zeros(n, bool)
  is_test[np.random.default_rng(seed).permutation(n)[:n_test]] = True
  train = [ex for ex, t in zip(examples, is_test) if not t]
  test = [ex for ex, t in zip(examples, is_test) if t]
  return train, test
