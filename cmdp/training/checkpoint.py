"""Checkpoints with orbax: the train state plus a JSON record of everything else.

In a multi-process run every process calls save and restore with its global arrays; orbax
writes each array's shards from the processes that hold them and the JSON from process 0.

A checkpoint holds the student's params, the optimiser state, lambda, the step and the
PRNG key (`TrainState`), and as JSON the data position, the calibrated budget and the
student's architecture. Restoring into a run whose student has another shape is refused
with a message naming both shapes, before orbax touches any array.
"""
from __future__ import annotations

import os
import signal
import threading
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from cmdp import models


class CheckpointMismatchError(ValueError):
  """The checkpoint was written by a run with a different model."""


class Checkpointer:
  """Periodic and final saves under `DIR/checkpoints`, keeping the last `keep`."""

  def __init__(self, workdir: str, keep: int = 3, async_save: bool = True):
    """`async_save`: write in the background while training goes on (orbax's default); off,
    a save finishes before the next step, so its host copy of the state never coexists
    with a step's temporaries (on a CPU host, 2 GB less peak for the main job's student)."""
    self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                             enable_async_checkpointing=async_save),
        item_names=("state", "meta"))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: Any, meta: dict, *, wait: bool = False) -> None:
    """Saves `state` and `meta` as `step` (a step already saved is kept as it is)."""
    if step in self.manager.all_steps():
      return
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)
    if wait:
      self.manager.wait_until_finished()

  def read_meta(self, step: int | None = None) -> dict:
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"No checkpoint under {self.directory}.")
    return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

  def restore(self, abstract_state: Any, model_config: models.ModelConfig,
              step: int | None = None) -> tuple[Any, dict]:
    """Restores `(state, meta)` at `step` (default: latest) into `abstract_state`'s shardings."""
    step = self.latest_step() if step is None else step
    meta = self.read_meta(step)
    check_model_matches(meta.get("student_model", {}), model_config, self.directory, step)
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
    try:
      restored = self.manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(target)))
    except ValueError as e:
      if "do not match" not in str(e):
        raise
      raise CheckpointMismatchError(
          f"Checkpoint {self.directory} step {step} holds another train state: "
          f"{describe_state_mismatch(str(e), meta)}. Restore with the config that wrote it "
          f"({os.path.dirname(self.directory)}/config.json, which `python -m cmdp.evaluate "
          "--workdir DIR` reads without --config), or use a fresh --workdir.") from None
    return restored["state"], meta

  def restore_params(self, abstract_params: Any, model_config: models.ModelConfig,
                     step: int | None = None) -> Any:
    """The student's params alone at `step` (default: latest), into `abstract_params`'
    shardings: a run that starts from another's (`student.init_workdir`, e.g. a heal
    trained with another objective or optimiser) reads only what it shares with it."""
    step = self.latest_step() if step is None else step
    check_model_matches(self.read_meta(step).get("student_model", {}), model_config,
                        self.directory, step)
    target = {"params": jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_params)}
    with ocp.PyTreeCheckpointer() as reader:  # the state item's subtree, apart from the manager
      restored = reader.restore(
          os.path.join(self.directory, str(step), "state"), args=ocp.args.PyTreeRestore(
              item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
              partial_restore=True))
    return restored["params"]

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


# What each part of the train state (`TrainState`) depends on in the config.
_STATE_PARTS = {
    "opt_state": "its optimiser state differs (another config.optimizer: name, "
                 "grad_clip_norm, schedule, weight_decay)",
    "objective_state": "its objective state differs (config.objective: the checkpoint's run "
                       "trained {objective!r}, whose state, such as lambda, this objective "
                       "does not have, or the reverse)",
    "params": "its student parameters differ (config.student)",
}


def describe_state_mismatch(orbax_message: str, meta: dict) -> str:
  """Which parts of the train state differ, from orbax's tree mismatch message (which
  lists each differing top-level part on an unindented line ending with ':')."""
  parts = [l[:-1].split(".")[0] for l in orbax_message.splitlines()
           if l.endswith(":") and l[:1] not in (" ", "\t") and " " not in l]
  parts = list(dict.fromkeys(p for p in parts if p in _STATE_PARTS))
  if not parts:
    return "its structure differs (another config.optimizer or config.objective)"
  return "; ".join(_STATE_PARTS[p].format(objective=meta.get("objective", "?"))
                   for p in parts)


_SHAPE_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                 "num_kv_heads", "head_dim", "tie_word_embeddings", "attention_bias", "qk_norm")


def model_record(config: models.ModelConfig) -> dict:
  """The architecture fields that fix parameter shapes, stored with every checkpoint."""
  return {k: getattr(config, k) for k in _SHAPE_FIELDS}


def check_model_matches(saved: dict, config: models.ModelConfig, where: str, step) -> None:
  current = model_record(config)
  diff = {k: (saved.get(k), v) for k, v in current.items() if saved.get(k) != v}
  if diff:
    detail = ", ".join(f"{k}: checkpoint {a} vs config {b}" for k, (a, b) in diff.items())
    raise CheckpointMismatchError(
        f"Checkpoint {where} step {step} was written for another student model ({detail}). "
        "Use a fresh --workdir for this config, or restore with the config that wrote it.")


class PreemptionGuard:
  """Turns SIGTERM (TPU preemption, job schedulers) into a flag the loop checks each step.

  A save is collective, so in a multi-process run all processes must stop at the same step:
  `requested` is true on every process once any of them got the signal (a one-integer
  all-gather per check).
  """

  def __init__(self):
    self._signalled = False
    self._previous = None

  @property
  def requested(self) -> bool:
    if jax.process_count() == 1:
      return self._signalled
    flags = multihost_utils.process_allgather(np.asarray([self._signalled], np.int32))
    return bool(np.asarray(flags).any())

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def _handle(self, signum, frame):
    del signum, frame
    self._signalled = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
    return False
