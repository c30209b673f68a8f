"""Brute-force enumeration of a tabular policy with EOS, the independent reference of the
estimator tests. Nothing here imports cmdp.

Vocabulary {0: "a", 1: "b", 2: EOS}; responses stop at EOS or after `MAX_LEN` = 3 tokens, so
there are 1 + 2 + 12 = 15 of them, of lengths 1 to 3. A policy is a table of logits per
state (the prefix of non-EOS tokens, 7 states). The policy samples from
softmax(logits / temperature); costs read the deployed student, softmax(logits).

`objective_value` writes each objective's expected value J(theta) = E_y[...] from
docs/method.md with plain loops over tokens; `jax.grad` of it is the true gradient the
estimators must match. Violation flags are indicator functions of the costs, so they
are under stop_gradient (piecewise constant in theta).
"""
from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np

V, EOS, MAX_LEN = 3, 2, 3
STATES = [()] + [(a,) for a in range(2)] + [(a, b) for a in range(2) for b in range(2)]
STATE_INDEX = {s: i for i, s in enumerate(STATES)}


def all_responses() -> list[tuple[int, ...]]:
  out = [(EOS,)]
  out += [(a, EOS) for a in range(2)]
  out += [(a, b, c) for a in range(2) for b in range(2) for c in range(V)]
  return out


RESPONSES = all_responses()


def tables(seed: int, scale: float = 1.2):
  """Student and teacher logit tables `[7, V]` and a task reward per response."""
  rng = np.random.default_rng(seed)
  student = jnp.asarray(rng.normal(size=(len(STATES), V)) * scale, jnp.float32)
  teacher = jnp.asarray(rng.normal(size=(len(STATES), V)) * scale, jnp.float32)
  reward = jnp.asarray(rng.uniform(size=len(RESPONSES)), jnp.float32)
  return student, teacher, reward


def rows(responses):
  """`(targets [N, 3], mask [N, 3], state_ids [N, 3])` of responses, right padded."""
  n = len(responses)
  targets, mask, states = (np.zeros((n, MAX_LEN), np.int32), np.zeros((n, MAX_LEN), np.float32),
                           np.zeros((n, MAX_LEN), np.int32))
  for i, y in enumerate(responses):
    for t, tok in enumerate(y):
      targets[i, t], mask[i, t], states[i, t] = tok, 1.0, STATE_INDEX[tuple(y[:t])]
  return targets, mask, states


def log_softmax(x):
  return jax.nn.log_softmax(x, axis=-1)


def kl_row(p_logits, q_logits):
  lp, lq = log_softmax(p_logits), log_softmax(q_logits)
  return jnp.sum(jnp.exp(lp) * (lp - lq), -1)


def token_cost(kind, student, teacher, state, token):
  """c_t of the deployed student at `state` for the sampled `token` (differentiable)."""
  s, t = student[state], teacher[state]
  if kind == "reverse_kl":
    return kl_row(s, t)
  if kind == "logratio":
    return log_softmax(s)[token] - log_softmax(t)[token]
  return -log_softmax(t)[token]  # teacher_nll


def response_logprob(policy, y, temperature):
  return sum(log_softmax(policy[STATE_INDEX[tuple(y[:t])]] / temperature)[y[t]]
             for t in range(len(y)))


def costs_of(kind, student, teacher, y):
  return [token_cost(kind, student, teacher, STATE_INDEX[tuple(y[:t])], y[t])
          for t in range(len(y))]


def violation_flags(costs, budget, constraint, discount):
  """The absorbing flags v_t of the constraint (floats, stop_gradient)."""
  costs = [jax.lax.stop_gradient(c) for c in costs]
  flags, running, norm, v = [], 0.0, 0.0, False
  length = len(costs)
  for t, c in enumerate(costs):
    running = running + discount ** t * c
    norm = norm + discount ** t
    if constraint == "sum":
      now = running > budget
    elif constraint == "mean":
      now = running > budget * length
    else:
      now = running / norm > budget
    v = jnp.logical_or(v, now)
    flags.append(v)
  return flags


def sequence_cost(costs, constraint, discount):
  """C(y) (differentiable in the costs)."""
  disc = [discount ** t for t in range(len(costs))]
  if constraint == "sum":
    return sum(d * c for d, c in zip(disc, costs))
  if constraint == "mean":
    return sum(d * c for d, c in zip(disc, costs)) / len(costs)
  means = [sum(d * c for d, c in zip(disc[:t + 1], costs[:t + 1])) / sum(disc[:t + 1])
           for t in range(len(costs))]
  return jnp.max(jnp.stack(means))


def saute_return(task_reward, costs, budget, constraint, penalty, n, discount, pay,
                 units="budget"):
  """sum_t r~_t of one response (method.md literally). A cost inside a penalty is divided
  by the per-sequence budget (d for sum, d T otherwise) in budget units, by 1 in nats."""
  sg = [jax.lax.stop_gradient(c) for c in costs]
  flags = violation_flags(sg, budget, constraint, discount)
  unit = 1.0 if units == "nats" else budget * (1 if constraint == "sum" else len(costs))
  total, before = 0.0, False
  for t, (c, v) in enumerate(zip(costs, flags)):
    p = {"constant": -n, "scaled": -n * c / unit, "constant_plus_scaled": -n - c / unit,
         "terminal": jnp.where(before, 0.0, -n)}[penalty]
    r = task_reward if t == len(costs) - 1 else 0.0
    kept = r if pay else jnp.where(v, 0.0, r)
    total = total + kept + jnp.where(v, p, 0.0)
    before = v
  return total


def hinge_return(task_reward, costs, budget, constraint, n, discount, pay, units="budget"):
  """cmdp_hinge: R unless violated (Sauté) minus n (C(y) - d)_+ / d (budget units)."""
  cost = sequence_cost(costs, constraint, discount)
  violated = jax.lax.stop_gradient(cost) > budget
  unit = budget if units == "budget" else 1.0
  kept = task_reward if pay else jnp.where(violated, 0.0, task_reward)
  return kept - n * jnp.maximum(cost - budget, 0.0) / unit


def objective_value(name, student, teacher, reward, hp, lam=0.0):
  """J(theta) = E_{y ~ pi_theta^temperature}[per-response value] (see the module docstring)."""
  total = 0.0
  for i, y in enumerate(RESPONSES):
    prob = jnp.exp(response_logprob(student, y, hp.temperature))
    if name == "grpo":
      value = reward[i]
    elif name in ("cmdp", "worst_case"):
      costs = costs_of(hp.cost, student, teacher, y)
      value = saute_return(reward[i], costs, hp.budget, hp.constraint, hp.penalty,
                           hp.penalty_scale, hp.cost_discount, hp.pay_reward_if_violated,
                           hp.penalty_units)
    elif name == "cmdp_hinge":
      costs = costs_of(hp.cost, student, teacher, y)
      value = hinge_return(reward[i], costs, hp.budget, hp.constraint, hp.penalty_scale,
                           hp.cost_discount, hp.pay_reward_if_violated, hp.penalty_units)
    elif name in ("soft_lagrangian", "dual_lagrangian"):
      costs = costs_of(hp.cost, student, teacher, y)
      value = reward[i] - lam * sequence_cost(costs, hp.constraint, hp.cost_discount)
    elif name == "minillm":  # E[sum_t log pi_T(y_t) - log pi(y_t)] of the sampling policy
      value = (response_logprob(teacher, y, 1.0)
               - response_logprob(student, y, hp.temperature))
    else:
      raise ValueError(name)
    total = total + prob * value
  return total


def smoothed_flags_value(student, teacher, reward, hp, width_budgets):
  """`sum_y sg(pi(y)) sum_t sg(J_t) F_h(M_t(theta) - d)`: cmdp's boundary term is its
  gradient (docs/method.md). `M_t` is the running peak of the statistic the flag compares
  with `d` after token t, `J_t` the return's jump where the flag at t fires, `F_h` the
  logistic CDF of width `h = width_budgets * d` (flat beyond 10 h, where the kernel is
  cut off); the probabilities and the jumps are
  held fixed, the costs inside `M_t` are live."""
  h, n, total = width_budgets * hp.budget, hp.penalty_scale, 0.0
  for i, y in enumerate(RESPONSES):
    prob = jax.lax.stop_gradient(jnp.exp(response_logprob(student, y, hp.temperature)))
    costs = costs_of(hp.cost, student, teacher, y)
    length = len(costs)
    unit = 1.0 if hp.penalty_units == "nats" else hp.budget * (
        1 if hp.constraint == "sum" else length)
    kappa = {"scaled": n / unit, "constant_plus_scaled": 1.0 / unit}.get(hp.penalty, 0.0)
    disc = [hp.cost_discount ** t for t in range(length)]
    stats = []
    for t in range(length):
      running = sum(d * c for d, c in zip(disc[:t + 1], costs[:t + 1]))
      stats.append(running / {"sum": 1.0, "mean": length,
                              "prefix_mean": sum(disc[:t + 1])}[hp.constraint])
      last = t == length - 1
      r = reward[i] if last and not hp.pay_reward_if_violated else 0.0
      if hp.penalty == "terminal":
        jump = r + n if last else 0.0
      else:
        jump = r + (0.0 if hp.penalty == "scaled" else n) + kappa * costs[t]
      peak = jnp.max(jnp.stack(stats))
      u = (peak - hp.budget) / h
      # F_h's derivative is the kernel inside its support (10 widths), 0 beyond.
      cdf = jnp.where(jnp.abs(jax.lax.stop_gradient(u)) <= 10.0, jax.nn.sigmoid(u),
                      jax.lax.stop_gradient(jax.nn.sigmoid(u)))
      total = total + prob * jax.lax.stop_gradient(jump) * cdf
  return total


def groups(group_size: int):
  """Every ordered group of `group_size` responses, as index tuples `[M, G]`."""
  return np.array(list(itertools.product(range(len(RESPONSES)), repeat=group_size)), np.int32)


def sequence_costs_np(kind, student, teacher, constraint, discount):
  """C(y) for every response, numpy (to place budgets between them)."""
  return np.array([float(sequence_cost(costs_of(kind, student, teacher, y), constraint, discount))
                   for y in RESPONSES])
