"""Deterministic, resumable batches and the random split helper."""
import numpy as np
import pytest

from cmdp.data import PromptIterator, split_examples


def _take(it, n):
  return [it.next_batch() for _ in range(n)]


def test_epoch_order_is_the_documented_permutation():
  items = list(range(10))
  it = PromptIterator(items, 3, seed=4)
  batches = _take(it, 6)  # 3 full batches per epoch; the 10th item of each epoch is dropped
  for epoch in range(2):
    perm = np.random.default_rng((4, epoch)).permutation(10).tolist()
    assert batches[3 * epoch:3 * epoch + 3] == [perm[0:3], perm[3:6], perm[6:9]]
  assert it.state() == {"epoch": 1, "index": 9}


@pytest.mark.parametrize("stop_after", [1, 3, 4, 7])
def test_resume_gives_the_same_batches(stop_after):
  items = [f"ex{i}" for i in range(11)]
  reference = _take(PromptIterator(items, 4, seed=1), 12)
  first = PromptIterator(items, 4, seed=1)
  head = _take(first, stop_after)
  resumed = PromptIterator(items, 4, seed=1)
  resumed.restore(dict(first.state()))
  assert head + _take(resumed, 12 - stop_after) == reference


def test_no_shuffle_no_drop_last_one_epoch_covers_everything_once():
  batches = list(PromptIterator(list(range(7)), 3, seed=0, shuffle=False, drop_last=False,
                                num_epochs=1))
  assert batches == [[0, 1, 2], [3, 4, 5], [6]]


def test_bad_arguments():
  with pytest.raises(ValueError, match="batch_size=5"):
    PromptIterator([1, 2, 3], 5, seed=0)
  with pytest.raises(ValueError, match="no examples"):
    PromptIterator([], 1, seed=0)
  it = PromptIterator([1, 2, 3], 1, seed=0)
  with pytest.raises(ValueError, match="out of range"):
    it.restore({"epoch": 0, "index": 4})
  with pytest.raises(ValueError, match="needs integer 'epoch' and 'index'"):
    it.restore({"step": 3})


def test_split_examples():
  items = list(range(50))
  train, test = split_examples(items, 0.2, seed=3)
  expected_test = sorted(np.random.default_rng(3).permutation(50)[:10].tolist())
  assert test == expected_test
  assert train == [i for i in items if i not in set(expected_test)]
  assert split_examples(items, 0.2, seed=3) == (train, test)
  with pytest.raises(ValueError, match="test_fraction=1.0"):
    split_examples(items, 1.0, seed=0)
