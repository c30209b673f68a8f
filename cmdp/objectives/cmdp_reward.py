"""`cmdp` (the proposed method) and `worst_case` (the follow-up paper's variant).

Reward (method.md, Sauté without state augmentation), per response token t:

    r~_t = (1 - v_t) r_t + v_t p_t,   c_t = token_costs(hp.cost)  (student under stop_grad),

built by `cmdp.constraint.augmented_rewards`; returns `G_t = sum_{k>=t} gamma^(k-t) r~_k`.

Estimator. With a policy-dependent cost (`reverse_kl`: c_t = KL_t(theta) =
kl(pi_theta(.|s_t) || pi_T(.|s_t)), a function of the state s_t only) and a penalty that
depends on it, the immediate penalty of a violated token is `-kappa v_t KL_t(theta)` with
`kappa = n` for `scaled` and `kappa = 1` for `constant_plus_scaled` (0 for `constant`).
The gradient of the expected modified return splits into

    grad E[sum_t r~_t] = E[ sum_t grad log pi(y_t|s_t) (G_t + kappa v_t KL_t) ]   (score function)
                       - E[ sum_t kappa v_t grad KL_t(theta) ]                      (exact term)

(v_t is piecewise constant in theta, so it carries no gradient). The immediate term is
removed from the score-function return (`G^sf_t = G_t + kappa v_t sg(KL_t)`): it depends
on s_t only, so its score-function contribution has mean zero, and its gradient is taken
exactly over the vocabulary instead. The per-token loss is therefore

    loss_t = -min(rho_t A_t, clip(rho_t) A_t) + kappa v_t KL_t(theta) / s_b,
    A_t = (G^sf_t - b_b) / s_b,

aggregated by `hp.aggregation`, with the group baseline `b_b` and scale `s_b` of the
sequence return G_0 (policy_gradient). Dividing the exact term by `s_b` keeps it on the
score-function term's scale. For `logratio` and `teacher_nll` costs, c_t depends on the
action y_t; it stays in the score-function return and there is no exact term (the direct
gradient of `logratio`, `grad log pi(y_t)`, has mean zero).

`worst_case` is `cmdp` with cost=teacher_nll, constraint=prefix_mean, penalty=constant
(these three fields of `hp` are overridden; the rest apply as given).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from cmdp import constraint, divergences
from cmdp.objectives import common
from cmdp.objectives.config import ObjectiveConfig
from cmdp.objectives.policy_gradient import local_mean, policy_gradient_loss, sequence_returns
from cmdp.objectives.registry import register_objective

WORST_CASE_OVERRIDES = dict(cost="teacher_nll", constraint="prefix_mean", penalty="constant")


def exact_penalty_coef(hp: ObjectiveConfig) -> float:
  """kappa: the weight of KL_t(theta) in a violated token's immediate penalty (0: none)."""
  if hp.cost != "reverse_kl":
    return 0.0
  return {"constant": 0.0, "scaled": hp.penalty_scale, "constant_plus_scaled": 1.0}[hp.penalty]


def cmdp_terms(logits: jax.Array, batch: dict, hp: ObjectiveConfig):
  """The cmdp loss from student logits `[B, L, V]` (float32, differentiable).

  Returns `(loss, metrics)`, the loss full-batch normalised (see the module docstring).
  """
  mask = batch["mask"]
  teacher = common.teacher_logits(batch)
  sg_logits = jax.lax.stop_gradient(logits)
  logp = divergences.token_logprobs(logits, batch["targets"], chunk_size=hp.chunk_size)
  costs = constraint.token_costs(hp.cost, sg_logits, teacher, batch["targets"],
                                 chunk_size=hp.chunk_size)
  rewards, violated = constraint.augmented_rewards(
      batch["task_reward"], costs, mask, budget=hp.budget, constraint=hp.constraint,
      penalty=hp.penalty, penalty_scale=hp.penalty_scale, cost_discount=hp.cost_discount,
      pay_reward_if_violated=hp.pay_reward_if_violated)
  violated = violated.astype(jnp.float32) * mask
  returns = constraint.discounted_returns(rewards, mask, hp.gamma)
  seq_returns = sequence_returns(returns, mask)
  kappa = exact_penalty_coef(hp)
  kl_token = None
  if kappa:
    # kl(student||teacher), differentiable
    kl_token = divergences.kl(logits, teacher, chunk_size=hp.chunk_size)
    weight = kappa * violated
    sf_returns = returns + weight * jax.lax.stop_gradient(kl_token)
  else:
    sf_returns = returns
  loss, scale, metrics = policy_gradient_loss(logp, batch, sf_returns, seq_returns, hp)
  metrics["pg_loss"] = common.as_metric(loss, batch, hp)
  if kappa:
    exact = common.loss_term(weight / scale[:, None] * kl_token, batch, hp)
    loss = loss + exact
    metrics["exact_penalty"] = common.as_metric(exact, batch, hp)
  loss, entropy = common.add_entropy_bonus(loss, logits, batch, hp, metrics)
  metrics["violation_fraction"] = local_mean(violated, mask)
  metrics["augmented_return"] = jnp.mean(seq_returns)
  metrics.update(common.common_metrics(
      logits, batch, hp, entropy=entropy, costs=costs,
      kl_token=kl_token if kl_token is not None else
      (costs if hp.cost == "reverse_kl" else None)))
  return loss, metrics


@register_objective("cmdp", on_policy=True, needs_teacher=True, uses_lambda=False)
def cmdp_loss(params, batch, *, apply_fn, hp: ObjectiveConfig, lam=None):
  """The proposed constraint-augmented policy-gradient loss; `lam` is ignored."""
  common.check_batch(batch, "cmdp", ("old_logprobs", "task_reward", "teacher_logits"))
  return cmdp_terms(common.student_logits(params, batch, apply_fn), batch, hp)


@register_objective("worst_case", on_policy=True, needs_teacher=True, uses_lambda=False)
def worst_case_loss(params, batch, *, apply_fn, hp: ObjectiveConfig, lam=None):
  """`cmdp` with teacher_nll cost, prefix_mean constraint, constant penalty."""
  common.check_batch(batch, "worst_case", ("old_logprobs", "task_reward", "teacher_logits"))
  return cmdp_terms(common.student_logits(params, batch, apply_fn), batch,
                    hp.replace(**WORST_CASE_OVERRIDES))
