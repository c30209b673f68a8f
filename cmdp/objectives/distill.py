"""Distillation baselines: `gkd`, `minillm` and `sft`.

* `gkd`: per token `D_t = gkd_divergence(teacher, student, hp.gkd_beta)`, exact over the
  vocabulary (beta = 0: kl(teacher||student), beta = 1: kl(student||teacher), generalized
  JSD(beta) normalised in between); loss = agg_t D_t. Whether the batch holds student
  samples (on-policy) or reference solutions is the trainer's choice; the loss is the same.
* `minillm`: reverse KL by policy gradient (MiniLLM's single-step decomposition). Reward
  `r_t = log pi_T(y_t|s_t) - log pi_theta(y_t|s_t)` (both constant), returns `G_t`. Since
  `E_{y_t ~ pi_theta}[r_t] = -KL_t(theta)` with `KL_t = kl(pi_theta(.|s_t) || pi_T(.|s_t))`,

      grad E[sum_t r_t] = E[ sum_t grad log pi(y_t|s_t) (G_t - r_t) ] - E[ sum_t grad KL_t ],

  the immediate reward is removed from the score-function return (`G^sf_t = G_t - r_t =
  gamma G_{t+1}`; keeping it would count the single-step gradient twice) and its gradient
  is taken exactly over the vocabulary. Per-token loss
  `-min(rho A, clip(rho) A) + KL_t(theta) / s_b`, `A = (G^sf_t - b_b) / s_b`, with the
  group baseline and scale of G_0 (policy_gradient). `r_t` uses the current student's
  log-probabilities under stop_gradient.
* `sft`: cross-entropy `-log pi_theta(y_t)` on mask tokens (reference solutions or
  teacher samples: sequence-level KD).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from cmdp import constraint, divergences
from cmdp.objectives import common
from cmdp.objectives.config import ObjectiveConfig
from cmdp.objectives.policy_gradient import policy_gradient_loss, sequence_returns
from cmdp.objectives.registry import register_objective


@register_objective("gkd", on_policy=True, needs_teacher=True, uses_lambda=False)
def gkd_loss(params, batch, *, apply_fn, hp: ObjectiveConfig, lam=None):
  """Aggregated per-token GKD divergence(beta) between teacher and student."""
  common.check_batch(batch, "gkd", ("teacher_logits",))
  logits = common.student_logits(params, batch, apply_fn)
  div = divergences.gkd_divergence(common.teacher_logits(batch), logits, hp.gkd_beta,
                                   chunk_size=hp.chunk_size)
  loss = common.loss_term(div, batch, hp)
  metrics = dict(gkd_divergence=common.as_metric(loss, batch, hp))
  metrics.update(common.common_metrics(logits, batch, hp))
  return loss, metrics


@register_objective("minillm", on_policy=True, needs_teacher=True, uses_lambda=False)
def minillm_loss(params, batch, *, apply_fn, hp: ObjectiveConfig, lam=None):
  """MiniLLM: reverse KL by policy gradient plus the exact single-step term."""
  common.check_batch(batch, "minillm", ("old_logprobs", "teacher_logits"))
  mask = batch["mask"]
  logits = common.student_logits(params, batch, apply_fn)
  teacher = common.teacher_logits(batch)
  logp = divergences.token_logprobs(logits, batch["targets"], chunk_size=hp.chunk_size)
  teacher_logp = divergences.token_logprobs(teacher, batch["targets"], chunk_size=hp.chunk_size)
  rewards = (teacher_logp - jax.lax.stop_gradient(logp)) * mask
  returns = constraint.discounted_returns(rewards, mask, hp.gamma)
  loss, scale, metrics = policy_gradient_loss(
      logp, batch, returns - rewards, sequence_returns(returns, mask), hp)
  metrics["pg_loss"] = common.as_metric(loss, batch, hp)
  # kl(student||teacher), differentiable
  kl_token = divergences.kl(logits, teacher, chunk_size=hp.chunk_size)
  exact = common.loss_term(kl_token / scale[:, None], batch, hp)
  loss = loss + exact
  metrics["exact_kl"] = common.as_metric(exact, batch, hp)
  loss, entropy = common.add_entropy_bonus(loss, logits, batch, hp, metrics)
  metrics["logratio_return"] = jnp.mean(sequence_returns(returns, mask))
  metrics.update(common.common_metrics(logits, batch, hp, entropy=entropy, kl_token=kl_token))
  return loss, metrics


@register_objective("sft", on_policy=False, needs_teacher=False, uses_lambda=False)
def sft_loss(params, batch, *, apply_fn, hp: ObjectiveConfig, lam=None):
  """Cross-entropy `-log pi_theta(targets)` aggregated over mask tokens."""
  common.check_batch(batch, "sft", ())
  logits = common.student_logits(params, batch, apply_fn)
  nll = -divergences.token_logprobs(logits, batch["targets"], chunk_size=hp.chunk_size)
  loss = common.loss_term(nll, batch, hp)
  metrics = dict(nll=common.as_metric(loss, batch, hp))
  metrics.update(common.common_metrics(logits, batch, hp))
  return loss, metrics
