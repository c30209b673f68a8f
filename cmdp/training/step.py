"""The train state and the pure update step `(state, batch) -> (state, metrics)`.

Everything measured about an update is computed inside the step: each loss term, the
objective's diagnostics (task reward, KL to the teacher, constraint satisfaction, lambda,
entropy, clip fraction, ...) and the grad / param / update norms. The frozen teacher never
enters the state: its logits arrive in the batch. The step names no objective: the
registered objective's loss, state and state update are called through its interface.

Gradient accumulation is a transform of the loss, not a loop in the trainer: the batch is
split into `grad_accum_steps` microbatches of whole prompt groups, scanned, and the
gradients summed. Each microbatch's loss is normalised by the full batch's token and
sequence counts, so the sum equals the full-batch gradient; metrics are summed the same
way, so token-weighted means are exact under accumulation.
"""
from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from cmdp import models
from cmdp.objectives import Objective, ObjectiveConfig

# Batch fields with a leading batch axis (split into microbatches); see cmdp.objectives.
ROW_FIELDS = ("inputs", "targets", "input_mask", "mask", "old_logprobs", "teacher_logits",
              "ref_logprobs", "task_reward")


class TrainState(flax.struct.PyTreeNode):
  """Everything a run needs to continue, and nothing frozen (no teacher).

  step: [] int32, optimiser steps taken.
  params: the student's parameters.
  opt_state: the optax state.
  objective_state: the objective's own state (`Objective.init_state`; e.g. the Lagrange
    multiplier of dual_lagrangian; None for stateless objectives).
  rng: the PRNG key for the next rollout.
  """
  step: jax.Array
  params: Any
  opt_state: Any
  objective_state: Any
  rng: jax.Array


def init_state(params, optimizer: optax.GradientTransformation, objective: Objective,
               hp: ObjectiveConfig, rng: jax.Array) -> TrainState:
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    opt_state=optimizer.init(params),
                    objective_state=objective.init_state(hp), rng=rng)


def _split_microbatches(batch: dict, n: int) -> dict:
  return {k: (v.reshape(n, v.shape[0] // n, *v.shape[1:]) if k in ROW_FIELDS else v)
          for k, v in batch.items()}


def accumulate_gradients(loss_fn, params, batch: dict, n: int):
  """Sums `loss_fn(params, microbatch) -> (loss, metrics)`, its metrics and its gradients
  over `n` microbatches (a `lax.scan`). Losses and metrics are full-batch-normalised shares
  (cmdp.objectives), so the sums are the full-batch values."""
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  if n == 1:
    (loss, metrics), grads = grad_fn(params, batch)
    return loss, metrics, grads
  shared = {k: v for k, v in batch.items() if k not in ROW_FIELDS}
  rows = {k: v for k, v in _split_microbatches(batch, n).items() if k in ROW_FIELDS}

  def body(acc, mb):
    (loss, metrics), grads = grad_fn(params, {**shared, **mb})
    return jax.tree.map(jnp.add, acc, (loss, metrics, grads)), None

  abstract = jax.eval_shape(grad_fn, params, {**shared, **jax.tree.map(lambda v: v[0], rows)})
  zeros = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), abstract)
  (loss, metrics, grads), _ = jax.lax.scan(body, (zeros[0][0], zeros[0][1], zeros[1]), rows)
  return loss, metrics, grads


def make_train_step(objective: Objective, hp: ObjectiveConfig,
                    model_config: models.ModelConfig,
                    optimizer: optax.GradientTransformation, grad_accum_steps: int = 1):
  """Returns the pure `train_step(state, batch) -> (state, metrics)`.

  Args of the returned function:
    state: a `TrainState`.
    batch: the dict of `cmdp.objectives` plus the model inputs (`inputs`, `input_mask`)
      and `teacher_logits` for objectives with a teacher, leading axis = sequences;
      `num_tokens` and `num_sequences` are filled in here from the full batch.

  The student's raw logits go to the objective, which applies `hp.temperature` to the
  sampling policy itself. After the optimiser step the objective updates its own state
  from the step's metrics. A non-finite loss or gradient leaves the state unchanged and
  sets `nonfinite` to 1, so the host can stop with nothing lost.
  """
  def loss_fn(params, batch, objective_state):
    logits = models.forward(model_config, params, batch["inputs"], batch["input_mask"])
    return objective.loss_fn(logits.astype(jnp.float32), batch.get("teacher_logits"), batch,
                             hp, objective_state)

  def train_step(state: TrainState, batch: dict):
    batch = dict(batch)
    batch["num_tokens"] = jnp.maximum(batch["mask"].sum(), 1.0)
    batch["num_sequences"] = jnp.asarray(batch["mask"].shape[0], jnp.float32)
    loss, metrics, grads = accumulate_gradients(
        lambda p, b: loss_fn(p, b, state.objective_state), state.params, batch,
        grad_accum_steps)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    objective_state = objective.update_state(state.objective_state, metrics, hp)

    grad_norm = optax.global_norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
    new_state = state.replace(
        step=state.step + finite.astype(jnp.int32), params=keep(params, state.params),
        opt_state=keep(opt_state, state.opt_state),
        objective_state=keep(objective_state, state.objective_state))
    metrics = dict(metrics)
    metrics.update(objective.state_metrics(state.objective_state, hp))
    metrics.update(
        loss=loss, grad_norm=grad_norm, param_norm=optax.global_norm(state.params),
        update_norm=optax.global_norm(updates), nonfinite=1.0 - finite.astype(jnp.float32))
    return new_state, metrics

  return train_step
