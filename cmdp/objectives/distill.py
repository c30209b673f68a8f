"""Distillation baselines: `gkd`, `minillm` and `sft`.

* `gkd`: per token `D_t = gkd_divergence(teacher, student, hp.gkd_beta)` of the deployed
  student, exact over the vocabulary (beta = 0: kl(teacher||student), beta = 1:
  kl(student||teacher), generalized JSD(beta) normalised in between); loss = agg_t D_t.
  Whether the batch holds student samples (on-policy) or reference solutions is the
  trainer's choice; the loss is the same.
* `minillm`: the reverse KL of the sampling policy pi (logits / temperature) by policy
  gradient (MiniLLM's single-step decomposition). Reward `r_t = log pi_T(y_t|s_t) -
  log pi(y_t|s_t)` (constants). Since `E_{y_t ~ pi}[r_t] = -KL_t(theta)` with
  `KL_t = kl(pi(.|s_t) || pi_T(.|s_t))`, a function of the state,

      grad E[sum_t r_t] = E[ sum_t grad log pi(y_t|s_t) (G_t - r_t) ] - E[ sum_t grad KL_t ]:

  the immediate reward leaves the token's own return and its gradient is taken exactly
  over the vocabulary (policy_gradient's `immediate` / `exact`).
* `sft`: cross-entropy `-log pi_theta(y_t)` of the deployed student on the batch's tokens
  (reference solutions or teacher samples: sequence-level KD).
"""
from __future__ import annotations

import jax

from cmdp import divergences
from cmdp.objectives import common
from cmdp.objectives.config import ObjectiveConfig
from cmdp.objectives.policy_gradient import policy_gradient_loss, sequence_sum
from cmdp.objectives.registry import PG_FIELDS, register_objective


@register_objective("gkd", on_policy=True, needs_teacher=True, reads={"gkd_beta", "aggregation"})
def gkd_loss(student_logits, teacher_logits, batch, hp: ObjectiveConfig, state=None):
  """Aggregated per-token GKD divergence(beta) between teacher and student."""
  del state
  common.check_batch(batch, "gkd", (), teacher_logits, True)
  div = divergences.gkd_divergence(jax.lax.stop_gradient(teacher_logits), student_logits,
                                   hp.gkd_beta, chunk_size=hp.chunk_size)
  loss = common.loss_term(div, batch, hp)
  metrics = dict(gkd_divergence=loss)
  metrics.update(common.common_metrics(student_logits, teacher_logits, batch, hp))
  return loss, metrics


@register_objective("minillm", on_policy=True, needs_teacher=True, reads=PG_FIELDS)
def minillm_loss(student_logits, teacher_logits, batch, hp: ObjectiveConfig, state=None):
  """MiniLLM: reverse KL by policy gradient plus the exact single-step term."""
  del state
  common.check_batch(batch, "minillm", ("old_logprobs",), teacher_logits, True)
  mask = batch["mask"]
  teacher = jax.lax.stop_gradient(teacher_logits)
  policy = common.policy_logits(student_logits, hp)
  logp = divergences.token_logprobs(policy, batch["targets"], chunk_size=hp.chunk_size)
  teacher_logp = divergences.token_logprobs(teacher, batch["targets"], chunk_size=hp.chunk_size)
  rewards = (teacher_logp - jax.lax.stop_gradient(logp)) * mask
  kl_policy = divergences.kl(policy, teacher, chunk_size=hp.chunk_size)  # differentiable
  loss, metrics = policy_gradient_loss(logp, batch, rewards, hp, causal=True,
                                       immediate=rewards, exact=kl_policy)
  loss, entropy = common.add_entropy_bonus(loss, student_logits, batch, hp, metrics)
  metrics["logratio_return"] = sequence_sum((rewards * mask).sum(-1), batch)
  metrics.update(common.common_metrics(student_logits, teacher, batch, hp, entropy=entropy))
  return loss, metrics


@register_objective("sft", on_policy=False, needs_teacher=False, reads={"aggregation"})
def sft_loss(student_logits, teacher_logits, batch, hp: ObjectiveConfig, state=None):
  """Cross-entropy `-log pi_theta(targets)` aggregated over mask tokens."""
  del state
  common.check_batch(batch, "sft", ())
  nll = -divergences.token_logprobs(student_logits, batch["targets"], chunk_size=hp.chunk_size)
  loss = common.loss_term(nll, batch, hp)
  metrics = dict(nll=loss)
  metrics.update(common.common_metrics(student_logits, teacher_logits, batch, hp))
  return loss, metrics
