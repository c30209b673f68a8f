"""The policy-gradient core shared by grpo, cmdp, worst_case, the Lagrangians and minillm.

Per-token rewards `[B, L]` -> returns by reverse scan (`cmdp.constraint.discounted_returns`)
-> group baseline -> advantages per token -> PPO-clipped surrogate -> aggregation.

Group baseline. Rows come in contiguous groups of `group_size` samples of one prompt. The
group statistics are those of the sequence return `G_0` (the return at the first response
token, whose expectation is the objective), computed over each group (`[B/G, G]`):

    grpo:  b_i = mean_j G0_j                 (GRPO; includes the sample itself)
    loo:   b_i = (sum_j G0_j - G0_i) / (G-1) (leave-one-out: unbiased)
    none:  b_i = 0, s_i = 1                  (normalize_std is ignored)
    s_i = std_j G0_j (ddof=1) + 1e-6 if normalize_std else 1

and the advantage of token t of row i is `A_it = (G^sf_it - b_i) / s_i`, where `G^sf` is the
score-function return (the return `G_t`, minus any immediate term that an objective
differentiates exactly; see cmdp and minillm). With the task reward only at the last token
and gamma = 1 this is exactly GRPO's `(R_i - mean R) / std R` on every token.

PPO surrogate per token: `-min(rho A, clip(rho, 1-eps, 1+eps) A)`, `rho = exp(logp - old)`.

Aggregation of per-token values `x_bt` over mask tokens (`m_bt`), normalised by the FULL
batch's counts so that gradients of microbatches of whole groups sum to the full-batch
gradient (N = batch["num_tokens"], S = batch["num_sequences"]):

    token_mean:                sum_bt m x / N
    sequence_mean:             sum_bt m x / S                    (per-sequence sum)
    sequence_mean_token_mean:  sum_b (sum_t m x / sum_t m) / S   (GRPO's original)
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from cmdp import divergences
from cmdp.objectives.config import ObjectiveConfig

ADVANTAGE_EPS = 1e-6  # added to the group std before dividing


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


def group_baseline(seq_returns: jax.Array, group_size: int, advantage: str,
                   normalize_std: bool) -> tuple[jax.Array, jax.Array]:
  """Per-row baseline `b [B]` and scale `s [B]` from groups of `group_size` rows (see top)."""
  b = seq_returns.shape[0]
  if advantage == "none":
    return jnp.zeros_like(seq_returns), jnp.ones_like(seq_returns)
  if b % group_size:
    raise ValueError(f"batch of {b} rows is not a whole number of groups of "
                     f"group_size={group_size}: a (micro)batch must hold whole groups.")
  if group_size < 2:
    raise ValueError(f"advantage={advantage!r} needs group_size >= 2 (got {group_size}): "
                     "a group of one has no baseline; set group_size or advantage='none'.")
  g = seq_returns.reshape(b // group_size, group_size)
  total = jnp.sum(g, axis=-1, keepdims=True)
  if advantage == "grpo":
    baseline = jnp.broadcast_to(total / group_size, g.shape)
  elif advantage == "loo":
    baseline = (total - g) / (group_size - 1)
  else:
    raise ValueError(f"unknown advantage {advantage!r}; use grpo, loo or none.")
  if normalize_std:
    scale = jnp.broadcast_to(jnp.std(g, axis=-1, ddof=1, keepdims=True) + ADVANTAGE_EPS, g.shape)
  else:
    scale = jnp.ones_like(g)
  return baseline.reshape(b), scale.reshape(b)


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


def local_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
  """Mean of `values [B, L]` over this microbatch's mask tokens (metrics)."""
  return jnp.sum(values * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def policy_gradient_loss(logp: jax.Array, batch: dict, sf_returns: jax.Array,
                         seq_returns: jax.Array, hp: ObjectiveConfig):
  """The PPO-clipped, group-baselined policy-gradient loss.

  Args:
    logp: `[B, L]` float32 log pi_theta(targets) (differentiable).
    batch: the batch (reads mask, old_logprobs, num_tokens, num_sequences).
    sf_returns: `[B, L]` score-function returns (constant).
    seq_returns: `[B]` sequence returns `G_0` for the group statistics (constant).
    hp: the config (group_size, advantage, normalize_std, clip_eps, aggregation).

  Returns:
    loss: [] the aggregated surrogate (full-batch normalised).
    scale: `[B]` the advantage scale `s` (objectives divide their exact terms by it so
      that they stay on the score-function term's scale).
    metrics: clip_fraction, ratio_mean, advantage_mean, advantage_std, approx_kl_old
      (k3 estimate of kl(pi_old||pi_theta)), means over this microbatch's mask tokens.
  """
  mask = batch["mask"]
  sf_returns = jax.lax.stop_gradient(sf_returns)
  baseline, scale = group_baseline(jax.lax.stop_gradient(seq_returns), hp.group_size,
                                   hp.advantage, hp.normalize_std)
  adv = (sf_returns - baseline[:, None]) / scale[:, None] * mask
  old = batch["old_logprobs"]
  per_token, ratio, clipped = ppo_clip(logp, old, adv, mask, hp.clip_eps)
  loss = aggregate(per_token, mask, hp.aggregation, batch["num_tokens"],
                   batch["num_sequences"])
  adv_mean = local_mean(adv, mask)
  metrics = dict(
      clip_fraction=local_mean(clipped, mask),
      ratio_mean=local_mean(ratio, mask),
      advantage_mean=adv_mean,
      advantage_std=jnp.sqrt(local_mean(jnp.square(adv - adv_mean), mask)),
      approx_kl_old=local_mean(divergences.k3(
          jnp.where(mask > 0, old, 0.0), jnp.where(mask > 0, jax.lax.stop_gradient(logp), 0.0)),
          mask),
  )
  return loss, scale, metrics
