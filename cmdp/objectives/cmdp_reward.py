"""`cmdp` (the proposed method), `worst_case` (the follow-up's preset of it) and the
`cmdp_hinge` variant.

Reward (docs/method.md, Sauté without state augmentation), per response token t:

    r~_t = (1 - v_t) r_t + v_t p_t,   c_t = the deployed student's cost (common.token_costs),

built by `cmdp.constraint.augmented_rewards`, with `v_t` the absorbing violation flag and
`p_t` the penalty, `n = penalty_scale` in task-reward units and `D` the cost's unit
(`penalty_units`: the per-sequence budget, or 1 nat): `terminal` -n once at the first
violated token (the default, Sauté's constant unsafe reward), `constant` -n on every
violated token, `scaled` -n c_t / D, `constant_plus_scaled` -n - c_t / D.

Estimator: the gradient of E[sum_t r~_t] over responses sampled from the policy is

    E[ sum_t grad log pi(y_t|s_t) W_t ]  -  E[ sum_t kappa v_t grad c_t(theta) ],

with `kappa = n / D` (scaled), `1 / D` (constant_plus_scaled), 0 (terminal, constant): v_t
is piecewise constant in theta, so the only direct dependence on theta is the cost inside
the penalty (`common.cost_gradient`):
  * reverse_kl: `c_t = KL_t(theta)` depends on the state only; its gradient is exact over
    the vocabulary and, for a causal reward, the immediate `-kappa v_t KL_t` leaves the
    token's own weight W_t (mean zero against its score);
  * logratio: `c_t = log pi(y_t|s_t) - log pi_T(y_t|s_t)`: the direct term is
    `kappa v_t grad log pi(y_t|s_t)`. It is NOT mean zero, since v_t depends on y_t.
  * teacher_nll: no direct dependence.
`W_t` is the return to go for a causal reward (`sum`; `prefix_mean` unless a scaled
penalty's unit `d T` reads the length) and the whole sequence return otherwise
(`constraint.reward_is_causal`). Under the terminal penalty (reward withheld), a token
whose state already fixes the flag has a known return to go (`-n` at the flag, 0 after):
its advantage is 0 (`settled_tokens`, `policy_gradient`'s known values).

Boundary term (`boundary_width = beta > 0`, docs/method.md): the score function above holds
each response's flags fixed; the population gradient also has `-E[sum_t J_t delta(M_t - d)
grad M_t]`, the jump `J_t = r_t - p_t` of the return where the flag at t fires (`R + n` at
the last token for terminal) times the density of the flag's statistic `M_t` at `d`. The
loss adds its smoothed form, `J_t k_h(M_t - d) dM_t / dc_k` (`k_h` the logistic kernel of
width `h = beta d`) on every token's exact cost gradient (`boundary_coef`); the reward,
returns, baseline and settled tokens are unchanged, and `beta = 0` builds none of it.

`cmdp_hinge` pays, at the last token, `(1 - V) R - n (C(y) - d)_+ / D'` with `V = 1[C(y) >
d]` and `D' = d` (budget units) or 1 (nats): its gradient is the score function on the
whole return plus the pathwise subgradient `(n / D') V grad C(y) = (n / D') V sum_t w_t
grad c_t` on every token of a violating response, also those before the Sauté flag.

`worst_case` is the cmdp loss under its preset: cost=teacher_nll, constraint=prefix_mean,
penalty=constant. The preset lives in the config (`cmdp.training.config.set_objective`), so
calibration, metrics and evaluation measure the constraint it trains on.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from cmdp import constraint, divergences
from cmdp.objectives import common
from cmdp.objectives.config import ObjectiveConfig
from cmdp.objectives.policy_gradient import (last_token_rewards, policy_gradient_loss,
                                              sequence_sum, token_sum)
from cmdp.objectives.registry import PG_FIELDS, register_objective

WORST_CASE_PRESET = dict(cost="teacher_nll", constraint="prefix_mean", penalty="constant")
SAUTE_FIELDS = PG_FIELDS | {"penalty", "penalty_scale", "penalty_units", "pay_reward_if_violated"}
HINGE_FIELDS = SAUTE_FIELDS - {"penalty"}
# worst_case's teacher_nll cost does not depend on theta: no boundary term to weigh.
CMDP_FIELDS = SAUTE_FIELDS | {"boundary_width"}
# The boundary kernel is cut off beyond this many widths h from d (its tails there hold
# 2 sigmoid(-10) = 9e-5 of its mass): a response that far from the budget carries no
# boundary gradient at all, so a group far over d with tied returns has exactly none and
# its step is skipped (`optimizer.skip_zero_grad`), not moved by a 1e-18 gradient plus
# Adam's momentum.
BOUNDARY_SUPPORT = 10.0


def _setup(student_logits, teacher_logits, batch, hp: ObjectiveConfig, name: str):
  """The policy's log-probs, the teacher (no gradient) and the costs (no gradient)."""
  common.check_batch(batch, name, ("old_logprobs", "task_reward"), teacher_logits, True)
  teacher = jax.lax.stop_gradient(teacher_logits)
  logp = divergences.token_logprobs(common.policy_logits(student_logits, hp), batch["targets"],
                                    chunk_size=hp.chunk_size)
  costs = common.token_costs(jax.lax.stop_gradient(student_logits), teacher, batch["targets"],
                             hp)
  return logp, teacher, costs


def _finish(loss, metrics, student_logits, teacher, batch, hp, costs, kl_token, penalty):
  """The entropy bonus and the metrics every Sauté objective reports."""
  loss, entropy = common.add_entropy_bonus(loss, student_logits, batch, hp, metrics)
  metrics["penalty"] = sequence_sum(penalty, batch)
  metrics.update(common.common_metrics(
      student_logits, teacher, batch, hp, entropy=entropy, costs=costs,
      scores=common.sequence_scores(student_logits, teacher, batch, hp, costs=costs,
                                    kl_token=kl_token)))
  return loss, metrics


def _exact_kl(student_logits, teacher, hp: ObjectiveConfig):
  """The differentiable kl(student||teacher) per token when the cost is it (else None)."""
  if hp.cost != "reverse_kl":
    return None
  return divergences.kl(student_logits, teacher, chunk_size=hp.chunk_size)


def settled_tokens(violated: jax.Array, hp: ObjectiveConfig, causal: bool) -> jax.Array | None:
  """`[B, L]` bool: the tokens whose state fixes their return to go, or None where no state
  does (module docstring).

  Only the terminal penalty with the reward withheld: once the flag has fired, the return
  to go is 0 (the flag token's own is `-n`), whatever comes next. The flag at `t` reads
  `c_0..c_t`; `reverse_kl`'s `c_t` is a function of the state `s_t`, so its flag token is
  settled too; `logratio` and `teacher_nll` read `y_t`, so only the tokens after it are.
  """
  if hp.penalty != "terminal" or hp.pay_reward_if_violated or not causal:
    return None
  violated = violated.astype(bool)
  if hp.cost == "reverse_kl":
    return violated
  return jnp.pad(violated[:, :-1], ((0, 0), (1, 0)))


def boundary_coef(task_reward, costs, mask, kappa, hp: ObjectiveConfig):
  """`(coef [B, L], weight [B])`: cmdp's smoothed boundary term (docs/method.md, the
  boundary term), or None when off (`boundary_width = 0`, or a cost that does not depend
  on theta: teacher_nll).

  The flag `v_t = 1[M_t > d]` (`M_t` the running peak of the flag's statistic,
  `constraint.running_peak`) switches the token's reward `r_t` to its penalty `p_t`, so
  the return jumps by `J_t = r_t - p_t` where it fires: `(R + n)` at the last token for
  terminal (`n` once the reward is paid anyway), `r_t + n + kappa c_t` on every token for
  the others (`constant`: `kappa = 0`; `scaled`: no `n`). Each indicator smoothed to the
  logistic CDF `F_h(M_t - d)`, `h = beta d`, has the pathwise gradient `-J_t k_h(M_t - d)
  grad M_t`, `k_h(u) = s (1 - s) / h` with `s = sigmoid(u / h)` for `|u| <= 10 h`
  (`BOUNDARY_SUPPORT`; 0 beyond): `coef_k = sum_t J_t
  k_h(M_t - d) dM_t / dc_k` (`constraint.peak_weights`), constants of the sample, on each
  token's exact cost gradient. `weight` is `sum_t J_t k_h(M_t - d)` per sequence.
  """
  if hp.boundary_width == 0 or hp.cost == "teacher_nll":
    return None
  mask = mask.astype(jnp.float32)
  reward = jnp.zeros_like(task_reward) if hp.pay_reward_if_violated else task_reward
  n = jnp.float32(hp.penalty_scale)
  if hp.penalty == "terminal":
    jump = last_token_rewards(reward + n, mask)
  else:
    paid = 0.0 if hp.penalty == "scaled" else n
    jump = last_token_rewards(reward, mask) + (paid + kappa * costs) * mask
  width = hp.boundary_width * hp.budget
  peak = constraint.running_peak(costs, mask, hp.constraint, hp.cost_discount)
  u = (peak - hp.budget) / width
  s = jax.nn.sigmoid(u)
  inside = (mask > 0) & (jnp.abs(u) <= BOUNDARY_SUPPORT)
  per_token = jnp.where(inside, jump * s * (1.0 - s) / width, 0.0)
  coef = constraint.peak_weights(per_token, costs, mask, hp.constraint, hp.cost_discount)
  return coef, jnp.sum(per_token, axis=-1)


def cmdp_loss(student_logits, teacher_logits, batch, hp: ObjectiveConfig, state=None):
  """The constraint-augmented policy-gradient loss `(loss, metrics)` (module docstring)."""
  del state
  mask = batch["mask"]
  logp, teacher, costs = _setup(student_logits, teacher_logits, batch, hp, "cmdp")
  rewards, violated = constraint.augmented_rewards(
      batch["task_reward"], costs, mask, budget=hp.budget, constraint=hp.constraint,
      penalty=hp.penalty, penalty_scale=hp.penalty_scale, penalty_units=hp.penalty_units,
      cost_discount=hp.cost_discount, pay_reward_if_violated=hp.pay_reward_if_violated)
  violated = violated.astype(jnp.float32) * mask
  kappa = constraint.penalty_cost_coef(hp.penalty, hp.penalty_scale, constraint.penalty_divisor(
      mask, hp.budget, hp.constraint, hp.penalty_units))
  exact = immediate = kl_token = None
  if hp.penalty in ("scaled", "constant_plus_scaled"):
    kl_token = _exact_kl(student_logits, teacher, hp)  # reused by the metrics
    exact, immediate = common.cost_gradient(kappa * violated, student_logits, teacher, batch,
                                            hp, kl_token)
  task = batch["task_reward"].astype(jnp.float32)
  boundary = boundary_coef(task, costs, mask, kappa, hp)
  if boundary is not None:  # not part of the return: no immediate reward to remove
    if kl_token is None:
      kl_token = _exact_kl(student_logits, teacher, hp)
    edge, _ = common.cost_gradient(boundary[0], student_logits, teacher, batch, hp, kl_token)
    exact = edge if exact is None else exact + edge
  causal = constraint.reward_is_causal(hp.constraint, hp.penalty, hp.penalty_units)
  loss, metrics = policy_gradient_loss(logp, batch, rewards, hp, causal=causal,
                                       immediate=immediate, exact=exact,
                                       settled=settled_tokens(violated, hp, causal))
  metrics["violation_fraction"] = token_sum(violated, batch)
  if boundary is not None:
    metrics["boundary_weight"] = sequence_sum(boundary[1], batch)
  # The penalty paid per sequence, in reward units: the reward a sequence would have had
  # without the constraint minus the one it got.
  kept = task if hp.pay_reward_if_violated else jnp.where(jnp.any(violated > 0, -1), 0.0, task)
  paid = kept - jnp.sum(rewards, axis=-1)
  return _finish(loss, metrics, student_logits, teacher, batch, hp, costs, kl_token, paid)


def hinge_loss(student_logits, teacher_logits, batch, hp: ObjectiveConfig, state=None):
  """`cmdp_hinge`: Sauté's withheld reward plus the hinge `n (C(y) - d)_+ / D` (module
  docstring), `D = d` in budget units and 1 in nats."""
  del state
  mask = batch["mask"]
  logp, teacher, costs = _setup(student_logits, teacher_logits, batch, hp, "cmdp_hinge")
  seq_cost = constraint.sequence_cost(costs, mask, hp.constraint, hp.cost_discount)
  violating = (seq_cost > hp.budget).astype(jnp.float32)
  unit = hp.budget if hp.penalty_units == "budget" else 1.0
  paid = hp.penalty_scale * jnp.maximum(seq_cost - hp.budget, 0.0) / unit
  task = batch["task_reward"].astype(jnp.float32)
  kept = task if hp.pay_reward_if_violated else task * (1.0 - violating)
  rewards = last_token_rewards(kept - paid, mask)
  # The pathwise (sub)gradient of -n (C - d)_+ / D: (n / D) 1[C > d] w_t on every token's
  # cost; the whole sequence return weighs every token's score (the hinge reads all of y).
  weights = constraint.sequence_weights(costs, mask, hp.constraint, hp.cost_discount)
  kl_token = _exact_kl(student_logits, teacher, hp)
  coef = (hp.penalty_scale / unit) * violating[:, None] * weights
  exact, _ = common.cost_gradient(coef, student_logits, teacher, batch, hp, kl_token)
  loss, metrics = policy_gradient_loss(logp, batch, rewards, hp, causal=False, exact=exact)
  return _finish(loss, metrics, student_logits, teacher, batch, hp, costs, kl_token, paid)


register_objective("cmdp", on_policy=True, needs_teacher=True, constrained=True,
                   reads=CMDP_FIELDS)(cmdp_loss)
register_objective("worst_case", on_policy=True, needs_teacher=True, constrained=True,
                   reads=SAUTE_FIELDS, preset=WORST_CASE_PRESET)(cmdp_loss)
register_objective("cmdp_hinge", on_policy=True, needs_teacher=True, constrained=True,
                   reads=HINGE_FIELDS)(hinge_loss)
