"""Plain numpy (float64) re-implementations of the objectives, written from method.md with
loops, as the independent reference of the tests. Nothing here imports cmdp."""
from __future__ import annotations

import numpy as np


def log_softmax(x):
  x = np.asarray(x, np.float64)
  m = x.max(-1, keepdims=True)
  return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def kl(p_logits, q_logits):
  """kl(p||q) per position."""
  lp, lq = log_softmax(p_logits), log_softmax(q_logits)
  return (np.exp(lp) * (lp - lq)).sum(-1)


def entropy(logits):
  lp = log_softmax(logits)
  return -(np.exp(lp) * lp).sum(-1)


def token_logprobs(logits, targets):
  lp = log_softmax(logits)
  return np.take_along_axis(lp, np.asarray(targets)[..., None], -1)[..., 0]


def last_token_rewards(task_reward, mask):
  out = np.zeros(mask.shape)
  for b in range(mask.shape[0]):
    idx = np.nonzero(mask[b])[0]
    if len(idx):
      out[b, idx[-1]] = task_reward[b]
  return out


def saute_rewards(task_reward, costs, mask, budget, penalty, n, pay_reward_if_violated=False,
                  constraint="sum", units="budget"):
  """Sauté reward with gamma_c = 1: returns (rewards, violated).

  constraint 'sum': violated once the running sum of costs exceeds the budget;
  'prefix_mean': once the running mean of costs exceeds it. A cost inside a penalty is in
  units of the per-sequence budget (d, or d T for prefix_mean) or in nats.
  """
  rewards, violated = np.zeros(mask.shape), np.zeros(mask.shape)
  task = last_token_rewards(task_reward, mask)
  for b in range(mask.shape[0]):
    total, count, v = 0.0, 0, False
    length = mask[b].sum()
    unit = 1.0 if units == "nats" else budget * (1.0 if constraint == "sum" else length)
    for t in range(mask.shape[1]):
      if not mask[b, t]:
        continue
      was = v
      total, count = total + costs[b, t], count + 1
      v = v or (total > budget if constraint == "sum" else total / count > budget)
      p = {"constant": -n, "scaled": -n * costs[b, t] / unit, "terminal": 0.0 if was else -n,
           "constant_plus_scaled": -n - costs[b, t] / unit}[penalty]
      keep = task[b, t] if (pay_reward_if_violated or not v) else 0.0
      rewards[b, t] = keep + (p if v else 0.0)
      violated[b, t] = v
  return rewards, violated


def boundary_coefficients(task_reward, costs, mask, budget, width, penalty, n, pay,
                          constraint="sum", units="budget"):
  """cmdp's boundary term with gamma_c = 1: `(coef [B, T], weight [B])`, `coef_k = sum_t J_t
  k_h(M_t - d) dM_t / dc_k` with `J_t` the return's jump where the flag at t fires, `M_t`
  the running peak of the flag's statistic (sum S_t, mean S_t / T, prefix_mean S_t / t)
  and `k_h` the logistic kernel of width `h = width * budget`, 0 beyond 10 h."""
  coef, weight = np.zeros(mask.shape), np.zeros(mask.shape[0])
  h = width * budget
  for b in range(mask.shape[0]):
    idx = np.nonzero(mask[b])[0]
    length = len(idx)
    unit = 1.0 if units == "nats" else budget * (1.0 if constraint == "sum" else length)
    kappa = {"scaled": n / unit, "constant_plus_scaled": 1.0 / unit}.get(penalty, 0.0)
    stats = []
    for k, t in enumerate(idx):
      total = costs[b, idx[:k + 1]].sum()
      stats.append(total / {"sum": 1.0, "mean": length, "prefix_mean": k + 1.0}[constraint])
      peak = int(np.argmax(stats))  # the first one on ties
      last = k == length - 1
      reward = task_reward[b] if last and not pay else 0.0
      if penalty == "terminal":
        jump = reward + n if last else 0.0
      else:
        jump = reward + (0.0 if penalty == "scaled" else n) + kappa * costs[b, t]
      u = (stats[peak] - budget) / h
      s = 1.0 / (1.0 + np.exp(-u))
      j = jump * s * (1.0 - s) / h if abs(u) <= 10.0 else 0.0  # the kernel's support
      weight[b] += j
      norm = {"sum": 1.0, "mean": length, "prefix_mean": peak + 1.0}[constraint]
      coef[b, idx[:peak + 1]] += j / norm
  return coef, weight


def returns(rewards, mask, gamma):
  out = np.zeros(mask.shape)
  for b in range(mask.shape[0]):
    g = 0.0
    for t in reversed(range(mask.shape[1])):
      if mask[b, t]:
        g = rewards[b, t] + gamma * g
        out[b, t] = g
  return out


def first_token_values(x, mask):
  return np.array([x[b, np.nonzero(mask[b])[0][0]] for b in range(mask.shape[0])])


def group_baseline(values, group_size, mode):
  """Baseline per row: group mean (grpo), leave-one-out mean (loo) or 0 (none)."""
  baseline = np.zeros(len(values))
  for start in range(0, len(values), group_size):
    g = np.asarray(values[start:start + group_size], np.float64)
    for i in range(group_size):
      if mode == "grpo":
        baseline[start + i] = g.mean()
      elif mode == "loo":
        baseline[start + i] = (g.sum() - g[i]) / (group_size - 1)
  return baseline


def rms_scale(adv, mask, group_size):
  """Per row: the RMS of its group's advantages over the group's mask tokens (1 if all 0)."""
  scale = np.ones(len(adv))
  for start in range(0, len(adv), group_size):
    a, m = adv[start:start + group_size], mask[start:start + group_size]
    rms = np.sqrt((a ** 2 * m).sum() / m.sum())
    scale[start:start + group_size] = rms if rms > 0 else 1.0
  return scale


def aggregate(x, mask, aggregation, num_tokens, num_sequences):
  if aggregation == "token_mean":
    return (x * mask).sum() / num_tokens
  if aggregation == "sequence_mean":
    return (x * mask).sum() / num_sequences
  return sum((x[b] * mask[b]).sum() / mask[b].sum() for b in range(len(x))) / num_sequences


def ppo_per_token(logp, old, adv, clip_eps):
  ratio = np.exp(logp - old)
  return -np.minimum(ratio * adv, np.clip(ratio, 1 - clip_eps, 1 + clip_eps) * adv)


def pg_loss(logp, old, mask, weights, seq_returns, group_size, mode, normalize_std,
            clip_eps, aggregation, num_tokens, num_sequences, settled=None):
  """(loss, scale): the group-baselined PPO-clip surrogate of score-function `weights`;
  `settled` tokens (their state fixes their return to go) take it as their baseline."""
  baseline = group_baseline(seq_returns, group_size, mode)
  adv = (weights - baseline[:, None]) * mask
  if settled is not None:
    for b, t in zip(*np.nonzero(settled)):
      adv[b, t] = 0.0
  scale = rms_scale(adv, mask, group_size) if normalize_std else np.ones(len(adv))
  per_token = ppo_per_token(logp, old, adv / scale[:, None], clip_eps)
  return aggregate(per_token, mask, aggregation, num_tokens, num_sequences), scale
