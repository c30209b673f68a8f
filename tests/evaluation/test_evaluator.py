"""`evaluate_model` on table-driven models: its metrics against figures computed by hand, and
split over processes (threads standing in for them) against one process."""
import threading
from typing import NamedTuple

import jax
import numpy as np
import pytest

from cmdp import evaluation
from cmdp.data import Example

BATCH, PASS_K = 4, 2


class _Rollout(NamedTuple):
  rows: np.ndarray  # the example index of each row
  seed: int  # the decode's key: the batch index (greedy) or 10_000 (k + 1) + batch index
  lengths: np.ndarray


def _table(rows, seed, salt: int) -> np.ndarray:
  """A figure per (example, decode): a fixed pseudo-random value in {0, ..., 12}."""
  return ((np.asarray(rows) * 7919 + seed * 104729 + salt) % 13).astype(np.float32)


def _fns(shard=(0, 1), gather=None) -> evaluation.ModelFns:
  """Decoders and a scorer reading `_table`; the verifier checks that each response comes
  back with its own example (the row's index is the example's uid)."""
  def decoder(params, rows, mask, rng):
    del params, mask
    return _Rollout(rows, int(np.asarray(rng)[-1]), 1 + rows % 4)

  def decode(r):
    return [f"{row}:{int(ok)}" for row, ok in zip(r.rows, _table(r.rows, r.seed, 0) < 5)]

  def reward(completions, examples):
    rows, ok = zip(*(c.split(":") for c in completions))
    assert list(rows) == [ex.uid for ex in examples]
    return np.asarray(ok, np.float32)

  def score(params, r):
    del params
    cost = _table(r.rows, r.seed, 1)
    return {"sequence_cost": cost, "kl_seq": _table(r.rows, r.seed, 2) / 4,
            "satisfied": cost <= 6}

  extra = {} if gather is None else {"gather": gather}
  return evaluation.ModelFns(
      prompts=lambda examples: (np.asarray([int(ex.uid) for ex in examples]), None),
      greedy=decoder, sample=decoder, decode=decode, reward=reward, score=score,
      shard=shard, **extra)


def _examples(n: int) -> list:
  return [Example(uid=str(i), question="q", answer="1") for i in range(n)]


def _by_hand(n: int) -> dict:
  """The expected metrics of `_fns` on n examples in batches of BATCH, padding left out."""
  rows = np.arange(n)
  greedy = rows // BATCH
  sampled = [10_000 * (k + 1) + greedy for k in range(PASS_K)]
  ok = lambda seeds: _table(rows, seeds, 0) < 5
  kls = np.concatenate([_table(rows, s, 2) / 4 for s in sampled])
  return {
      "accuracy": ok(greedy).mean(), "num_examples": n, "response_length": (1 + rows % 4).mean(),
      "num_greedy": n, "num_sampled": PASS_K * n,
      "accuracy_sampled": np.mean([ok(s) for s in sampled]),
      f"pass@{PASS_K}": np.mean(np.any([ok(s) for s in sampled], axis=0)),
      "satisfaction_greedy": (_table(rows, greedy, 1) <= 6).mean(),
      "sequence_cost_greedy_mean": _table(rows, greedy, 1).mean(),
      "kl_seq_sampled_mean": kls.mean(), "kl_seq_sampled_std": kls.std(ddof=1),
      "kl_seq_sampled_q50": np.quantile(kls, 0.5),
  }


def _as_processes(count: int, run) -> list:
  """`run(shard, gather)` in `count` threads standing in for processes; `gather` stacks every
  thread's pytree in thread order, as `cmdp.training.processes.stack_over_processes` does
  across hosts."""
  barrier = threading.Barrier(count, timeout=60)
  slots, results = [None] * count, [None] * count

  def gather_for(i):
    def gather(tree):
      slots[i] = tree
      barrier.wait()
      stacked = jax.tree.map(lambda *xs: np.stack(xs), *slots)
      barrier.wait()  # every thread has read the slots before any fills them again
      return stacked
    return gather

  def target(i):
    results[i] = run((i, count), gather_for(i))

  threads = [threading.Thread(target=target, args=(i,)) for i in range(count)]
  for t in threads:
    t.start()
  for t in threads:
    t.join(timeout=120)
  return results


@pytest.mark.parametrize("num_examples,count", [(8, 2), (5, 2), (7, 2), (7, 4)])
def test_processes_get_the_one_process_metrics(num_examples, count):
  # (5, 2): the last batch holds one example, so process 1's block is all padding.
  examples = _examples(num_examples)
  one = evaluation.evaluate_model(_fns(), None, examples, batch_size=BATCH, pass_k=PASS_K,
                                  budget=6.0)
  for key, value in _by_hand(num_examples).items():
    assert one[key] == pytest.approx(value, rel=1e-6), key
  assert one["budget"] == 6.0
  split = _as_processes(count, lambda shard, gather: evaluation.evaluate_model(
      _fns(shard, gather), None, examples, batch_size=BATCH, pass_k=PASS_K, budget=6.0))
  assert split == [one] * count


def test_a_batch_that_does_not_split_over_the_processes_is_refused():
  with pytest.raises(ValueError, match=r"batch_size=3 does not split over 2 processes"):
    evaluation.evaluate_model(_fns(shard=(0, 2)), None, _examples(4), batch_size=3, pass_k=1)
