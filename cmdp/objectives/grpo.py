"""`grpo`: the task reward only, a group baseline, PPO clip.

Reward `r_t = R(x, y)` at the last response token, 0 before; the policy-gradient core
(policy_gradient) turns it into advantages `G_t - b` (`G_t = R` with gamma = 1) and the
clipped surrogate. Optional terms:

    + ref_kl_coef * agg_t k3_t,  k3_t = pi_ref/pi - 1 - log(pi_ref/pi) at y_t

(the k3 estimate of kl(pi||pi_ref), DeepSeek-Math's GRPO; needs `batch["ref_logprobs"]`),
and `- entropy_coef * agg_t entropy_t`.
"""
from __future__ import annotations

import jax.numpy as jnp

from cmdp import divergences
from cmdp.objectives import common
from cmdp.objectives.config import ObjectiveConfig
from cmdp.objectives.policy_gradient import last_token_rewards, policy_gradient_loss
from cmdp.objectives.registry import PG_FIELDS, register_objective

GRPO_FIELDS = PG_FIELDS | {"ref_kl_coef"}


def pg_terms(student_logits, batch: dict, hp: ObjectiveConfig, rewards=None, **pg_kwargs):
  """The grpo loss (or, with `rewards`, the same core on other per-token rewards).

  Returns `(loss, metrics, entropy [B, L])`: loss full-batch normalised; metrics the
  policy-gradient diagnostics (no common metrics).
  """
  mask = batch["mask"]
  logp = divergences.token_logprobs(common.policy_logits(student_logits, hp), batch["targets"],
                                    chunk_size=hp.chunk_size)
  if rewards is None:
    rewards = last_token_rewards(batch["task_reward"], mask)
  loss, metrics = policy_gradient_loss(logp, batch, rewards, hp, **pg_kwargs)
  if hp.ref_kl_coef > 0:
    if batch.get("ref_logprobs") is None:
      raise ValueError("ObjectiveConfig.ref_kl_coef > 0 needs batch['ref_logprobs'] "
                       "(log pi_ref of the targets); provide it or set ref_kl_coef=0.")
    ref = jnp.where(mask > 0, batch["ref_logprobs"], 0.0)
    k3 = divergences.k3(jnp.where(mask > 0, logp, 0.0), ref)
    ref_term = common.loss_term(k3, batch, hp)
    loss = loss + hp.ref_kl_coef * ref_term
    metrics["ref_kl"] = ref_term
  loss, entropy = common.add_entropy_bonus(loss, student_logits, batch, hp, metrics)
  return loss, metrics, entropy


@register_objective("grpo", on_policy=True, needs_teacher=False, reads=GRPO_FIELDS)
def grpo_loss(student_logits, teacher_logits, batch, hp: ObjectiveConfig, state=None):
  """GRPO loss `(loss, metrics)`; the teacher (when given) is only measured."""
  del state
  common.check_batch(batch, "grpo", ("old_logprobs", "task_reward"))
  loss, metrics, entropy = pg_terms(student_logits, batch, hp)
  metrics.update(common.common_metrics(student_logits, teacher_logits, batch, hp,
                                       entropy=entropy))
  return loss, metrics
