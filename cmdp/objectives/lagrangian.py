"""`soft_lagrangian` and `dual_lagrangian`: the task reward minus lambda times the cost.

Both are held to cmdp's constraint, in its own units: the per-sequence cost
`C(y) = sum_t w_t c_t` of `hp.cost` under `hp.constraint` and `hp.cost_discount`
(`cmdp.constraint.sequence_weights`), on the deployed student. The objective is

    max E[ R(x, y) - lambda C(y) ],

a policy gradient on the per-token reward `r_t - lambda w_t c_t` through the same core and
the same cost gradient as cmdp (`common.cost_gradient` with coefficient `lambda w_t`):
for reverse_kl the gradient of `KL_t(theta)` is exact over the vocabulary, for logratio the
direct `grad log pi(y_t|s_t)` term is added, and the score function carries the effect of
each token on the later states' costs. `sum` is causal; `mean` and `prefix_mean` (whose
weights read the whole response) use the sequence return on every token.

`soft_lagrangian` fixes `lambda = hp.soft_lambda` (reward per unit of C; the paper's
"GKD-GRPO" when the cost is the reverse KL). `dual_lagrangian` learns it by projected dual
ascent after each step (`update_lambda`), on one of two readings of the constraint:

    mean: E[C] <= d            delta = (mean_batch C - d) / d     (relative violation)
    rate: P(C > d) <= delta0   delta = violation_rate - delta0
    lambda <- clip(lambda + lambda_lr * delta / d, 0, lambda_max)

`lambda * d` is the penalty, in reward units, of a response exactly at the budget: each
update moves it by `lambda_lr * delta`, so with the default `lambda_lr = 1` a batch that is
entirely in violation (rate) or at twice the budget (mean) raises it by one reward unit.
During the first `lambda_warmup_steps` updates lambda stays at `lambda_init`.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from cmdp import constraint, divergences
from cmdp.objectives import common
from cmdp.objectives.config import ObjectiveConfig
from cmdp.objectives.grpo import GRPO_FIELDS, pg_terms
from cmdp.objectives.policy_gradient import last_token_rewards
from cmdp.objectives.registry import register_objective

DUAL_FIELDS = GRPO_FIELDS | {"dual_target", "violation_target", "lambda_init", "lambda_lr",
                             "lambda_max", "lambda_warmup_steps"}


class LambdaState(NamedTuple):
  """The Lagrange multiplier.

  lam: [] float32, the multiplier (>= 0, reward per unit of the sequence cost).
  step: [] int32, dual updates seen (warm-up ones included).
  """
  lam: jax.Array
  step: jax.Array


def init_lambda_state(hp: ObjectiveConfig) -> LambdaState:
  return LambdaState(lam=jnp.asarray(hp.lambda_init, jnp.float32),
                     step=jnp.zeros((), jnp.int32))


def dual_violation(metrics: dict, hp: ObjectiveConfig) -> jax.Array:
  """`delta` of the module docstring, from a step's metrics."""
  if hp.dual_target == "mean":
    return (metrics["constraint_value"] - hp.budget) / hp.budget
  return (1.0 - metrics["constraint_satisfaction"]) - hp.violation_target


def update_lambda(state: LambdaState, metrics: dict, hp: ObjectiveConfig) -> LambdaState:
  """One projected dual-ascent step from the step's `metrics` (constraint_value,
  constraint_satisfaction)."""
  delta = jnp.asarray(dual_violation(metrics, hp), jnp.float32)
  new = jnp.clip(state.lam + hp.lambda_lr * delta / hp.budget, 0.0, hp.lambda_max)
  warm = state.step < hp.lambda_warmup_steps
  return LambdaState(lam=jnp.where(warm, state.lam, new), step=state.step + 1)


def lagrangian_terms(student_logits, teacher_logits, batch, hp: ObjectiveConfig, lam, name):
  """`(loss, metrics)` of `R - lam * C(y)` (module docstring); `lam` a [] constant."""
  common.check_batch(batch, name, ("old_logprobs", "task_reward"), teacher_logits, True)
  mask = batch["mask"]
  teacher = jax.lax.stop_gradient(teacher_logits)
  lam = jax.lax.stop_gradient(jnp.asarray(lam, jnp.float32))
  costs = common.token_costs(jax.lax.stop_gradient(student_logits), teacher, batch["targets"],
                             hp)
  weights = constraint.sequence_weights(costs, mask, hp.constraint, hp.cost_discount)
  kl_token = (divergences.kl(student_logits, teacher, chunk_size=hp.chunk_size)
              if hp.cost == "reverse_kl" else None)
  exact, immediate = common.cost_gradient(lam * weights, student_logits, teacher, batch, hp,
                                          kl_token)
  rewards = last_token_rewards(batch["task_reward"], mask) - lam * weights * costs
  loss, metrics, entropy = pg_terms(student_logits, batch, hp, rewards,
                                    causal=hp.constraint == "sum", immediate=immediate,
                                    exact=exact)
  scores = common.sequence_scores(student_logits, teacher, batch, hp, costs=costs,
                                  kl_token=kl_token)
  metrics["penalty"] = lam * jnp.sum(scores["sequence_cost"]) / batch["num_sequences"]
  metrics.update(common.common_metrics(student_logits, teacher, batch, hp, entropy=entropy,
                                       scores=scores))
  return loss, metrics


@register_objective("soft_lagrangian", on_policy=True, needs_teacher=True, constrained=True,
                    reads=GRPO_FIELDS | {"soft_lambda"},
                    state_metrics=lambda state, hp: {"lambda": jnp.float32(hp.soft_lambda)})
def soft_lagrangian_loss(student_logits, teacher_logits, batch, hp: ObjectiveConfig,
                         state=None):
  """`R - soft_lambda * C(y)` by policy gradient."""
  del state
  return lagrangian_terms(student_logits, teacher_logits, batch, hp, hp.soft_lambda,
                          "soft_lagrangian")


@register_objective("dual_lagrangian", on_policy=True, needs_teacher=True, constrained=True,
                    reads=DUAL_FIELDS, init_state=init_lambda_state, update_state=update_lambda,
                    state_metrics=lambda state, hp: {"lambda": state.lam})
def dual_lagrangian_loss(student_logits, teacher_logits, batch, hp: ObjectiveConfig,
                         state: LambdaState):
  """`R - lambda * C(y)` with the learned multiplier `state.lam`."""
  return lagrangian_terms(student_logits, teacher_logits, batch, hp, state.lam,
                          "dual_lagrangian")
