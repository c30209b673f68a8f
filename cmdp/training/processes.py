"""Host values of a multi-process run (one process per host), and their combination.

Each process holds the rows of the global batch that its devices hold (a contiguous block,
in process order: `cmdp.data.PromptIterator`'s `shard`, `Experiment.put_batch`). Host
figures of those rows are combined here over the processes. With one process every helper
is a plain host copy: a one-process run calls no collective.
"""
from __future__ import annotations

import jax
import numpy as np
from jax.experimental import multihost_utils


def process_shard() -> tuple[int, int]:
  """This process's part of each batch: `(process_index, process_count)`."""
  return jax.process_index(), jax.process_count()


def process_rows(tree):
  """Host (numpy) copies of this process's rows of row-sharded global arrays: every row in a
  one-process run, else the contiguous block this process's devices hold."""
  if jax.process_count() == 1:
    return jax.device_get(tree)

  def rows(x):
    blocks = {}
    for shard in x.addressable_shards:  # replicas (e.g. over "tensor") hold the same rows
      blocks.setdefault(shard.index[0].start or 0, shard.data)
    return np.concatenate([np.asarray(blocks[k]) for k in sorted(blocks)])
  return jax.tree.map(rows, tree)


def sum_over_processes(values: np.ndarray) -> np.ndarray:
  """`values` summed over the processes (a small host vector; itself with one process)."""
  if jax.process_count() == 1:
    return values
  return np.asarray(multihost_utils.process_allgather(values)).sum(axis=0)


def stack_over_processes(tree):
  """Every process's host arrays (a pytree with the same shapes on every process), each
  leaf stacked in process order: `[process_count, ...]`, the same on every process."""
  if jax.process_count() == 1:
    return jax.tree.map(lambda x: np.asarray(x)[None], tree)
  return jax.tree.map(np.asarray, multihost_utils.process_allgather(tree))


def rows_over_processes(values: np.ndarray) -> np.ndarray:
  """Every process's rows `[n, ...]` (n the same on every process), concatenated in process
  order: `[process_count * n, ...]`, the same on every process."""
  stacked = stack_over_processes(np.asarray(values))
  return stacked.reshape((-1,) + stacked.shape[2:])
