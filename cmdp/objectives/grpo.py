"""`grpo`: the task reward only, group-normalised advantages, PPO clip.

Reward `r_t = R(x, y)` at the last response token, 0 before; returns `G_t` (gamma = 1:
`G_t = R`); advantages `(G_t - mean_group R) / std_group R` (see policy_gradient);
loss = PPO surrogate aggregated over mask tokens

    + ref_kl_coef * k3_t   with k3_t = pi_ref/pi_theta - 1 - log(pi_ref/pi_theta) at y_t,

the k3 estimate of kl(pi_theta||pi_ref) (DeepSeek-Math's GRPO), when `ref_kl_coef > 0`
(needs `batch["ref_logprobs"]`), - entropy_coef * entropy.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from cmdp import constraint, divergences
from cmdp.objectives import common
from cmdp.objectives.config import ObjectiveConfig
from cmdp.objectives.policy_gradient import (last_token_rewards, policy_gradient_loss,
                                             sequence_returns)
from cmdp.objectives.registry import register_objective


def grpo_terms(logits: jax.Array, batch: dict, hp: ObjectiveConfig):
  """The grpo loss from student logits `[B, L, V]` (float32, differentiable).

  Returns `(loss, metrics, entropy [B, L])`; the loss is full-batch normalised, the
  metrics hold the loss terms and the policy-gradient diagnostics (no common metrics).
  """
  mask = batch["mask"]
  logp = divergences.token_logprobs(logits, batch["targets"], chunk_size=hp.chunk_size)
  returns = constraint.discounted_returns(
      last_token_rewards(batch["task_reward"], mask), mask, hp.gamma)
  loss, _, metrics = policy_gradient_loss(logp, batch, returns, sequence_returns(returns, mask),
                                          hp)
  metrics["pg_loss"] = common.as_metric(loss, batch, hp)
  if hp.ref_kl_coef > 0:
    if batch.get("ref_logprobs") is None:
      raise ValueError("ObjectiveConfig.ref_kl_coef > 0 needs batch['ref_logprobs'] "
                       "(log pi_ref of the targets); provide it or set ref_kl_coef=0.")
    ref = jnp.where(mask > 0, batch["ref_logprobs"], 0.0)
    k3 = divergences.k3(jnp.where(mask > 0, logp, 0.0), ref)
    ref_term = hp.ref_kl_coef * common.loss_term(k3, batch, hp)
    loss = loss + ref_term
    metrics["ref_kl"] = common.as_metric(ref_term, batch, hp) / hp.ref_kl_coef
  loss, entropy = common.add_entropy_bonus(loss, logits, batch, hp, metrics)
  return loss, metrics, entropy


@register_objective("grpo", on_policy=True, needs_teacher=False, uses_lambda=False)
def grpo_loss(params, batch, *, apply_fn, hp: ObjectiveConfig, lam=None):
  """GRPO loss `(loss, metrics)`; `lam` is ignored. See the module docstring."""
  common.check_batch(batch, "grpo", ("old_logprobs", "task_reward"))
  logits = common.student_logits(params, batch, apply_fn)
  loss, metrics, entropy = grpo_terms(logits, batch, hp)
  metrics.update(common.common_metrics(logits, batch, hp, entropy=entropy))
  return loss, metrics
