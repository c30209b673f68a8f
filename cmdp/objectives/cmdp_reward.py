"""`cmdp` (the proposed method) and `worst_case` (the follow-up paper's preset of it).

Reward (docs/method.md, Sauté without state augmentation), per response token t:

    r~_t = (1 - v_t) r_t + v_t p_t,   c_t = the deployed student's cost (common.token_costs),

built by `cmdp.constraint.augmented_rewards`, with `v_t` the absorbing violation flag and
`p_t` the penalty (`constant` -n, `scaled` -n c_t, `constant_plus_scaled` -n - c_t).

Estimator: the gradient of E[sum_t r~_t] over responses sampled from the policy is

    E[ sum_t grad log pi(y_t|s_t) W_t ]  -  E[ sum_t kappa v_t grad c_t(theta) ],

with `kappa = n` (scaled), 1 (constant_plus_scaled), 0 (constant): v_t is piecewise
constant in theta, so the only direct dependence on theta is the cost inside the penalty
(`common.cost_gradient`):
  * reverse_kl: `c_t = KL_t(theta)` depends on the state only; its gradient is exact over
    the vocabulary and, for a causal constraint, the immediate `-kappa v_t KL_t` leaves the
    token's own weight W_t (mean zero against its score);
  * logratio: `c_t = log pi(y_t|s_t) - log pi_T(y_t|s_t)`: the direct term is
    `kappa v_t grad log pi(y_t|s_t)`. It is NOT mean zero, since v_t depends on y_t.
  * teacher_nll: no direct dependence.
`W_t` is the return to go for the causal constraints (`sum`, `prefix_mean`) and the whole
sequence return for `mean`, whose flag reads the final length (policy_gradient).

`worst_case` is the same loss under its preset: cost=teacher_nll, constraint=prefix_mean,
penalty=constant. The preset lives in the config (`cmdp.training.config.set_objective`), so
calibration, metrics and evaluation measure the constraint it trains on.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from cmdp import constraint, divergences
from cmdp.objectives import common
from cmdp.objectives.config import ObjectiveConfig
from cmdp.objectives.policy_gradient import policy_gradient_loss, token_sum
from cmdp.objectives.registry import PG_FIELDS, register_objective

WORST_CASE_PRESET = dict(cost="teacher_nll", constraint="prefix_mean", penalty="constant")
SAUTE_FIELDS = PG_FIELDS | {"penalty", "penalty_scale", "pay_reward_if_violated"}


def exact_penalty_coef(hp: ObjectiveConfig) -> float:
  """kappa: the weight of c_t(theta) in a violated token's penalty (0: none)."""
  return {"constant": 0.0, "scaled": hp.penalty_scale, "constant_plus_scaled": 1.0}[hp.penalty]


def cmdp_loss(student_logits, teacher_logits, batch, hp: ObjectiveConfig, state=None):
  """The constraint-augmented policy-gradient loss `(loss, metrics)` (module docstring)."""
  del state
  common.check_batch(batch, "cmdp", ("old_logprobs", "task_reward"), teacher_logits, True)
  mask = batch["mask"]
  teacher = jax.lax.stop_gradient(teacher_logits)
  logp = divergences.token_logprobs(common.policy_logits(student_logits, hp), batch["targets"],
                                    chunk_size=hp.chunk_size)
  costs = common.token_costs(jax.lax.stop_gradient(student_logits), teacher, batch["targets"],
                             hp)
  rewards, violated = constraint.augmented_rewards(
      batch["task_reward"], costs, mask, budget=hp.budget, constraint=hp.constraint,
      penalty=hp.penalty, penalty_scale=hp.penalty_scale, cost_discount=hp.cost_discount,
      pay_reward_if_violated=hp.pay_reward_if_violated)
  violated = violated.astype(jnp.float32) * mask
  kappa = exact_penalty_coef(hp)
  exact = immediate = kl_token = None
  if kappa:
    if hp.cost == "reverse_kl":  # differentiable kl(student||teacher), reused by the metrics
      kl_token = divergences.kl(student_logits, teacher, chunk_size=hp.chunk_size)
    exact, immediate = common.cost_gradient(kappa * violated, student_logits, teacher, batch,
                                            hp, kl_token)
  causal = hp.constraint != "mean"
  loss, metrics = policy_gradient_loss(logp, batch, rewards, hp, causal=causal,
                                       immediate=immediate, exact=exact)
  loss, entropy = common.add_entropy_bonus(loss, student_logits, batch, hp, metrics)
  metrics["violation_fraction"] = token_sum(violated, batch)
  metrics.update(common.common_metrics(
      student_logits, teacher, batch, hp, entropy=entropy,
      scores=common.sequence_scores(student_logits, teacher, batch, hp, costs=costs,
                                    kl_token=kl_token)))
  return loss, metrics


register_objective("cmdp", on_policy=True, needs_teacher=True, constrained=True,
                   reads=SAUTE_FIELDS)(cmdp_loss)
register_objective("worst_case", on_policy=True, needs_teacher=True, constrained=True,
                   reads=SAUTE_FIELDS, preset=WORST_CASE_PRESET)(cmdp_loss)
