"""`soft_lagrangian` and `dual_lagrangian`: grpo plus lambda times the per-token divergence.

Loss (the paper's "GKD-GRPO"):

    L = L_grpo + lambda * agg_t KL_t(theta),   KL_t = kl(pi_theta(.|s_t) || pi_T(.|s_t)),

the per-token reverse KL exact over the vocabulary, differentiable through the student
logits (teacher under stop_gradient), aggregated like the loss (`hp.aggregation`). The
divergence term is always the reverse KL, whatever `hp.cost`; `hp.cost` and
`hp.constraint` only define the measured constraint (`constraint_value`) that the dual
update reads. `soft_lagrangian` fixes `lambda = hp.soft_lambda`; `dual_lagrangian` takes
the learned `lam` argument, which the trainer updates after each step with
`update_lambda`.

Dual update (projected ascent in log space), with the violation
`v = mean_batch(sequence_cost) - budget` as measured on the step's batch:

    during the first `lambda_warmup_steps` updates: lambda stays at lambda_init;
    then   log lambda' = min(log max(lambda, floor) + lambda_lr * v / budget, log lambda_max)
           lambda' = 0 if lambda' <= floor.

Dividing by the budget makes `lambda_lr` a step per unit of relative violation. The
multiplier grows geometrically while the constraint is violated and shrinks geometrically
while it is slack, reaching exactly 0 (projection) once it falls to the floor; from 0 a
violation restarts it just above the floor.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from cmdp import divergences
from cmdp.objectives import common
from cmdp.objectives.config import ObjectiveConfig
from cmdp.objectives.grpo import grpo_terms
from cmdp.objectives.registry import register_objective


class LambdaState(NamedTuple):
  """The Lagrange multiplier, log-parametrised.

  log_lambda: [] float32, log of the multiplier; -inf encodes exactly 0.
  step: [] int32, dual updates seen (warm-up ones included).
  """
  log_lambda: jax.Array
  step: jax.Array


def init_lambda_state(hp: ObjectiveConfig) -> LambdaState:
  """The multiplier at `hp.lambda_init` (0 gives log_lambda = -inf), step 0."""
  return LambdaState(log_lambda=jnp.log(jnp.asarray(hp.lambda_init, jnp.float32)),
                     step=jnp.zeros((), jnp.int32))


def lambda_value(state: LambdaState) -> jax.Array:
  """The multiplier `lambda >= 0`, a [] float32."""
  return jnp.exp(state.log_lambda)


def update_lambda(state: LambdaState, violation, hp: ObjectiveConfig) -> LambdaState:
  """One projected dual-ascent step (see the module docstring).

  Args:
    state: the current multiplier.
    violation: [] measured `mean_batch(sequence_cost) - budget` (positive = violated).
    hp: reads budget, lambda_lr, lambda_max, lambda_warmup_steps, lambda_floor.
  """
  floor = jnp.log(jnp.float32(hp.lambda_floor))
  step_size = hp.lambda_lr * jnp.asarray(violation, jnp.float32) / hp.budget
  log_new = jnp.minimum(jnp.maximum(state.log_lambda, floor) + step_size,
                        jnp.log(jnp.float32(hp.lambda_max)))
  log_new = jnp.where(log_new <= floor, -jnp.inf, log_new)
  warm = state.step < hp.lambda_warmup_steps
  return LambdaState(log_lambda=jnp.where(warm, state.log_lambda, log_new),
                     step=state.step + 1)


def _lagrangian_loss(params, batch, apply_fn, hp: ObjectiveConfig, lam, name: str):
  common.check_batch(batch, name, ("old_logprobs", "task_reward", "teacher_logits"))
  logits = common.student_logits(params, batch, apply_fn)
  loss, metrics, entropy = grpo_terms(logits, batch, hp)
  kl_token = divergences.kl(logits, common.teacher_logits(batch))  # kl(student||teacher)
  kl_term = common.loss_term(kl_token, batch, hp)
  loss = loss + lam * kl_term
  metrics["kl_term"] = common.as_metric(kl_term, batch, hp)
  metrics["kl_penalty"] = lam * metrics["kl_term"]
  metrics.update(common.common_metrics(logits, batch, hp, entropy=entropy, kl_token=kl_token))
  return loss, metrics


@register_objective("soft_lagrangian", on_policy=True, needs_teacher=True, uses_lambda=False)
def soft_lagrangian_loss(params, batch, *, apply_fn, hp: ObjectiveConfig, lam=None):
  """grpo + hp.soft_lambda * aggregated kl(student||teacher); `lam` is ignored."""
  return _lagrangian_loss(params, batch, apply_fn, hp, hp.soft_lambda, "soft_lagrangian")


@register_objective("dual_lagrangian", on_policy=True, needs_teacher=True, uses_lambda=True)
def dual_lagrangian_loss(params, batch, *, apply_fn, hp: ObjectiveConfig, lam):
  """grpo + lam * aggregated kl(student||teacher), `lam` the learned multiplier ([] array)."""
  return _lagrangian_loss(params, batch, apply_fn, hp, jnp.asarray(lam, jnp.float32),
                          "dual_lagrangian")
