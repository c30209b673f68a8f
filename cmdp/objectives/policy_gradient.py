"""The policy-gradient core shared by grpo, cmdp, worst_case, the Lagrangians and minillm.

An objective hands in per-token rewards `r [B, L]` (constants), says whether they are
causal, and may hand in per-token `exact [B, L]` terms whose gradient is taken through the
logits (never through the sampled tokens). The core returns the loss whose expected
gradient is `-grad E[sum_t r_t]` (up to a positive factor, see `advantage`):

    loss = agg_t[ -min(rho_t A_t, clip(rho_t, 1-eps, 1+eps) A_t) ] + w agg_t[ exact_t ] / s

Score-function weights (`score_weights`):
  causal (r_t depends on the response only up to token t): the return to go
    `G_t = sum_{k>=t} gamma^(k-t) r_k`, minus `immediate_t`, the part of r_t that depends on
    the state s_t only and whose gradient the objective takes exactly instead (mean zero
    against grad log pi(y_t|s_t), so removing it only lowers the variance);
  not causal (r_t reads later tokens, e.g. the `mean` constraint's length): the whole
    sequence return `G_0` on every token, nothing removed.

Group baseline (`advantage`), from the sequence returns `G0 [B]` of each group of
`group_size` rows (`[B/G, G]`):
  loo:  `b_i = (sum_j G0_j - G0_i) / (G-1)` (default): independent of sample i, so the
        estimator is unbiased: E[grad loss] = -grad E[sum_t r_t] exactly;
  grpo: `b_i = mean_j G0_j` (self-inclusive). It shrinks the score-function part by
        (G-1)/G in expectation, so the exact terms are multiplied by `w = (G-1)/G` too: the
        expected gradient is (G-1)/G times the true one, the right direction;
  none: `b_i = 0`.
`A_it = weight_it - b_i` for `loo`/`grpo`/`none`, and `w = 1` except for `grpo`.

Known values (`settled`, causal rewards only): a token whose state fixes its return to go,
whatever the policy does from there on (Sauté's spent budget under the terminal penalty:
the penalty is paid, the reward withheld), takes the state's value `V(s_t) = G_t` as its
baseline, so its advantage is exactly 0. A baseline that is a function of the state keeps
the estimator unbiased, and the dropped term `grad log pi(y_t|s_t) (G_t - b_i)` has mean
zero given the state and no correlation with the earlier tokens' terms, so the variance
only falls.

Scale (`normalize_std`, default off). Off, `s = 1` and the advantages are bounded by the
rewards themselves. On, `s_g` is the root mean square of group g's advantages over its
response tokens (1 if they are all 0): `|A / s| <= sqrt(tokens in the group)` by
construction, also when every `G0` of the group is equal while the per-token returns
differ (where a std of `G0` would be 0). Any data-dependent scale biases the estimator
(it correlates with the sample), which is why it is off by default.

PPO surrogate per token, ratio `rho = exp(logp - old_logp)`; `old_logp` is the trainer's
own recomputation before the step's first update (`batch["trainer_logprobs"]`) when the step
made one, else the sampler's log-probabilities. With `tis_cap > 0` each token's surrogate
is weighted by `min(pi_trainer_old / pi_sampler, tis_cap)` (truncated importance sampling),
which corrects for a sampler whose numerics differ from the trainer's (e.g. bfloat16).

Aggregation of per-token values `x_bt` over response tokens `m_bt`, normalised by the FULL
batch's counts so that the gradients of microbatches of whole groups sum to the full-batch
gradient (`N = batch["num_tokens"]`, `S = batch["num_sequences"]`):

    sequence_mean:             sum_bt m x / S      (default; the gradient of E[sum_t r_t])
    token_mean:                sum_bt m x / N      (divides by the sampled length: biased)
    sequence_mean_token_mean:  sum_b (sum_t m x / sum_t m) / S   (GRPO's original: biased)
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from cmdp import constraint, divergences
from cmdp.objectives.config import ObjectiveConfig


def aggregate(values: jax.Array, mask: jax.Array, aggregation: str, num_tokens,
              num_sequences) -> jax.Array:
  """Reduces per-token `values [B, L]` over mask tokens `mask [B, L]` to a scalar (see top)."""
  masked = values * mask
  if aggregation == "token_mean":
    return jnp.sum(masked) / num_tokens
  if aggregation == "sequence_mean":
    return jnp.sum(masked) / num_sequences
  if aggregation == "sequence_mean_token_mean":
    per_seq = jnp.sum(masked, axis=-1) / jnp.maximum(jnp.sum(mask, axis=-1), 1.0)
    return jnp.sum(per_seq) / num_sequences
  raise ValueError(f"unknown aggregation {aggregation!r}; use token_mean, sequence_mean or "
                   "sequence_mean_token_mean.")


def token_sum(values: jax.Array, batch: dict) -> jax.Array:
  """`sum_bt m x / N`: this microbatch's share of the FULL batch's per-token mean.

  Metrics are built from such shares (and `sequence_sum`), so summing them over
  microbatches gives the exact full-batch mean under gradient accumulation.
  """
  return jnp.sum(values * batch["mask"]) / batch["num_tokens"]


def sequence_sum(values: jax.Array, batch: dict) -> jax.Array:
  """`sum_b x_b / S` for per-sequence `values [B]`: its share of the full-batch mean."""
  return jnp.sum(values) / batch["num_sequences"]


def last_token_rewards(task_reward: jax.Array, mask: jax.Array) -> jax.Array:
  """`[B, L]` float32: `task_reward [B]` at the last mask token of each row, 0 elsewhere."""
  positions = jnp.arange(mask.shape[-1])
  last = jnp.max(jnp.where(mask > 0, positions, -1), axis=-1, keepdims=True)
  return jnp.where(positions == last, task_reward.astype(jnp.float32)[:, None], 0.0)


def sequence_returns(returns: jax.Array, mask: jax.Array) -> jax.Array:
  """`[B]`: the return `G_0` at the first mask token of each row (0 for an empty row)."""
  first = jnp.argmax(mask > 0, axis=-1)
  g0 = jnp.take_along_axis(returns, first[:, None], axis=-1)[:, 0]
  return jnp.where(jnp.any(mask > 0, axis=-1), g0, 0.0)


def score_weights(rewards: jax.Array, mask: jax.Array, gamma: float, causal: bool,
                  immediate: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """`(weights [B, L], G0 [B])`: each token's score-function weight and the sequence return.

  See the module docstring; `immediate` is ignored when not causal.
  """
  returns = constraint.discounted_returns(rewards, mask, gamma)
  g0 = sequence_returns(returns, mask)
  if not causal:
    return jnp.broadcast_to(g0[:, None], mask.shape) * mask, g0
  if immediate is not None:
    returns = returns - immediate
  return returns * mask, g0


def group_baseline(seq_returns: jax.Array, group_size: int, advantage: str) -> jax.Array:
  """Per-row baseline `b [B]` from groups of `group_size` contiguous rows (see top)."""
  b = seq_returns.shape[0]
  if advantage == "none":
    return jnp.zeros_like(seq_returns)
  _check_groups(b, group_size, advantage)
  g = seq_returns.reshape(b // group_size, group_size)
  total = jnp.sum(g, axis=-1, keepdims=True)
  if advantage == "grpo":
    baseline = jnp.broadcast_to(total / group_size, g.shape)
  elif advantage == "loo":
    baseline = (total - g) / (group_size - 1)
  else:
    raise ValueError(f"unknown advantage {advantage!r}; use loo, grpo or none.")
  # A group whose returns are all equal has its own return as baseline, exactly: the sum
  # above can round, which would leave a tied group a gradient of rounding noise.
  baseline = jnp.where(jnp.all(g == g[:, :1], axis=-1, keepdims=True), g, baseline)
  return baseline.reshape(b)


def _check_groups(rows: int, group_size: int, advantage: str) -> None:
  if rows % group_size:
    raise ValueError(f"batch of {rows} rows is not a whole number of groups of "
                     f"group_size={group_size}: a (micro)batch must hold whole groups.")
  if group_size < 2:
    raise ValueError(f"advantage={advantage!r} needs group_size >= 2 (got {group_size}): "
                     "a group of one has no baseline; set rollout.group_size or advantage='none'.")


def group_rms_scale(adv: jax.Array, mask: jax.Array, group_size: int) -> jax.Array:
  """`s [B]`: the root mean square of each group's advantages over its response tokens
  (rows of one group share it; 1 where they are all 0)."""
  b = adv.shape[0]
  sq = jnp.sum(jnp.square(adv) * mask, axis=-1).reshape(b // group_size, group_size)
  count = jnp.sum(mask, axis=-1).reshape(b // group_size, group_size)
  ms = jnp.sum(sq, axis=-1) / jnp.maximum(jnp.sum(count, axis=-1), 1.0)
  rms = jnp.sqrt(ms)
  rms = jnp.where(rms > 0, rms, 1.0)
  return jnp.repeat(rms, group_size)


def exact_weight(hp: ObjectiveConfig) -> float:
  """`w`: the factor on exact terms that keeps them on the score-function part's scale."""
  if hp.advantage == "grpo":
    return (hp.group_size - 1) / hp.group_size
  return 1.0


def ppo_clip(logp: jax.Array, old_logp: jax.Array, advantages: jax.Array, mask: jax.Array,
             clip_eps: float) -> tuple[jax.Array, jax.Array, jax.Array]:
  """PPO clipped surrogate per token.

  Args:
    logp, old_logp: `[B, L]` log pi_theta(y_t) (differentiable) and log pi_old(y_t).
    advantages: `[B, L]` (constant).
    mask: `[B, L]`; off-mask positions get ratio 1.
    clip_eps: the clip range.

  Returns:
    loss `[B, L]` = -min(rho A, clip(rho, 1 - eps, 1 + eps) A), the ratio rho `[B, L]`, and
    `clipped [B, L]` float (1 where the clipped branch is active, i.e. zero gradient).
  """
  ratio = jnp.exp(jnp.where(mask > 0, logp - old_logp, 0.0))
  unclipped = ratio * advantages
  clipped = jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps) * advantages
  return -jnp.minimum(unclipped, clipped), ratio, (clipped < unclipped).astype(jnp.float32)


def policy_gradient_loss(logp: jax.Array, batch: dict, rewards: jax.Array, hp: ObjectiveConfig,
                         *, causal: bool = True, immediate: jax.Array | None = None,
                         exact: jax.Array | None = None, settled: jax.Array | None = None):
  """The loss of the module docstring.

  Args:
    logp: `[B, L]` float32 log-probabilities of the targets under the sampling policy
      (differentiable).
    batch: reads mask, old_logprobs, num_tokens, num_sequences.
    rewards: `[B, L]` per-token rewards (treated as constants).
    hp: group_size, advantage, normalize_std, clip_eps, aggregation, gamma.
    causal: whether `rewards[t]` depends on the response only up to token t.
    immediate: `[B, L]` the part of `rewards` that depends on the state only and whose
      gradient `exact` carries (removed from the token's own return when causal).
    exact: `[B, L]` differentiable per-token terms added to the loss (scaled by w / s).
    settled: `[B, L]` bool, tokens whose state fixes their return to go (module
      docstring): advantage 0. Only with a causal reward.

  Returns:
    `(loss, metrics)`; the loss is full-batch normalised; the metrics (shares of
    full-batch means, see `token_sum`) are pg_loss, exact_loss, clip_fraction, ratio_mean,
    advantage_mean, advantage_abs_mean, approx_kl_old (k3 estimate of kl(pi_old||pi_theta)),
    abs_logprob_diff (mean |log pi_theta - log pi_old|), return (mean G0), tis_weight_mean,
    groups_tied (the share of groups whose sequence returns are all equal: no contrast).
  """
  mask = batch["mask"]
  rewards = jax.lax.stop_gradient(rewards)
  if immediate is not None:
    immediate = jax.lax.stop_gradient(immediate)
  weights, g0 = score_weights(rewards, mask, hp.gamma, causal, immediate)
  baseline = group_baseline(g0, hp.group_size, hp.advantage)
  adv = (weights - baseline[:, None]) * mask
  if settled is not None:
    if not causal:
      raise ValueError("settled tokens need a causal reward: with the whole return on every "
                       "token, no state fixes a token's weight.")
    adv = jnp.where(settled, 0.0, adv)
  if hp.normalize_std:
    if hp.advantage == "none":
      _check_groups(adv.shape[0], hp.group_size, "none with normalize_std")
    scale = group_rms_scale(adv, mask, hp.group_size)
  else:
    scale = jnp.ones(adv.shape[:1], jnp.float32)
  adv = adv / scale[:, None]
  sampler = batch["old_logprobs"]
  old = batch.get("trainer_logprobs")
  old = sampler if old is None else old
  per_token, ratio, clipped = ppo_clip(logp, old, adv, mask, hp.clip_eps)
  tis = None
  if hp.tis_cap > 0:
    if batch.get("trainer_logprobs") is None:
      raise ValueError("ObjectiveConfig.tis_cap > 0 needs batch['trainer_logprobs'] (the "
                       "trainer's log-probs before the update); the train step adds them.")
    tis = jnp.minimum(jnp.exp(jnp.where(mask > 0, old - sampler, 0.0)), hp.tis_cap)
    per_token = per_token * jax.lax.stop_gradient(tis)
  pg = aggregate(per_token, mask, hp.aggregation, batch["num_tokens"], batch["num_sequences"])
  loss = pg
  metrics = dict(
      pg_loss=pg,
      clip_fraction=token_sum(clipped, batch),
      ratio_mean=token_sum(ratio, batch),
      advantage_mean=token_sum(adv, batch),
      advantage_abs_mean=token_sum(jnp.abs(adv), batch),
      approx_kl_old=token_sum(divergences.k3(
          jnp.where(mask > 0, old, 0.0), jnp.where(mask > 0, jax.lax.stop_gradient(logp), 0.0)),
          batch),
      abs_logprob_diff=token_sum(jnp.abs(jax.lax.stop_gradient(logp) - old), batch),
      **{"return": sequence_sum(g0, batch)},
  )
  if g0.shape[0] % hp.group_size == 0:  # groups whose returns give no contrast
    g = g0.reshape(-1, hp.group_size)
    tied = jnp.max(g, axis=-1) - jnp.min(g, axis=-1) <= 1e-6 * (1.0 + jnp.max(jnp.abs(g), -1))
    metrics["groups_tied"] = jnp.sum(tied) * hp.group_size / batch["num_sequences"]
  if tis is not None:
    metrics["tis_weight_mean"] = token_sum(tis, batch)
  if exact is not None:
    term = exact_weight(hp) * aggregate(exact / scale[:, None], mask, hp.aggregation,
                                        batch["num_tokens"], batch["num_sequences"])
    loss = loss + term
    metrics["exact_loss"] = term
  return loss, metrics
