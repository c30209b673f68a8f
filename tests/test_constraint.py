"""cmdp.constraint against plain-Python loops over tokens (float64) and numpy."""
import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cmdp import constraint as cst

CONSTRAINTS = ("sum", "mean", "prefix_mean")
PENALTIES = ("terminal", "constant", "scaled", "constant_plus_scaled")
BUDGETS = {"sum": 3.0, "mean": 0.45, "prefix_mean": 0.6}
# (constraint, penalty, pay, gamma_c, units); units matter only where the cost is read.
SWITCHES = [s + (u,) for s in itertools.product(CONSTRAINTS, PENALTIES, (False, True), (1.0, 0.9))
            for u in (("budget", "nats") if "scaled" in s[1] else ("budget",))]


def reference_rewards(task_reward, costs, mask, budget, constraint, penalty, n, gamma, pay,
                      units="budget"):
  """method.md read literally, one token at a time, in float64."""
  rewards, violated = np.zeros(costs.shape), np.zeros(costs.shape, bool)
  for b in range(costs.shape[0]):
    tokens = [t for t in range(costs.shape[1]) if mask[b, t]]
    z, v, weighted_sum, weights = 1.0, False, 0.0, 0.0
    # the penalty's cost unit: the per-sequence budget (d, or d T per token constraints)
    unit = 1.0 if units == "nats" else budget * (1 if constraint == "sum" else len(tokens))
    for k, t in enumerate(tokens):
      was = v
      c = float(costs[b, t])
      if constraint == "sum":
        z = (z - c / budget) / gamma
        v = v or z < 0
      elif constraint == "mean":
        z = (z - c / (budget * len(tokens))) / gamma
        v = v or z < 0
      else:  # discounted running mean of the costs so far above the budget
        weighted_sum += gamma**k * c
        weights += gamma**k
        v = v or weighted_sum / weights > budget
      r = task_reward[b] if t == tokens[-1] else 0.0
      p = {"constant": -n, "scaled": -n * c / unit, "constant_plus_scaled": -n - c / unit,
           "terminal": 0.0 if was else -n}[penalty]
      rewards[b, t] = (r if pay or not v else 0.0) + (p if v else 0.0)
      violated[b, t] = v
  return rewards, violated


def random_batch(seed, batch=6, length=12):
  """Responses with prompt zeros on the left and pad zeros on the right, garbage off-mask."""
  rng = np.random.default_rng(seed)
  costs = rng.uniform(-0.2, 1.0, size=(batch, length))
  mask = np.zeros((batch, length), bool)
  for b in range(batch):
    start = rng.integers(0, 3)
    mask[b, start:start + rng.integers(3, length - start + 1)] = True
  costs = np.where(mask, costs, rng.normal(size=costs.shape) * 1e3)
  return rng.uniform(0.5, 1.5, size=batch), costs, mask


@jax.jit
def all_switches(task_reward, costs, mask):
  """{switches: augmented_rewards(...)} for every combination in SWITCHES, compiled once
  per input shape (all tests below use [6, 12] so they share one compile)."""
  return {(c, p, pay, g, u): cst.augmented_rewards(
      task_reward, costs, mask, budget=BUDGETS[c], constraint=c, penalty=p, penalty_scale=1.7,
      penalty_units=u, cost_discount=g, pay_reward_if_violated=pay)
      for c, p, pay, g, u in SWITCHES}


def test_augmented_rewards_match_python_loop_for_every_switch():
  task_reward, costs, mask = random_batch(0)
  for switches, (rewards, violated) in all_switches(task_reward, costs, mask).items():
    c, p, pay, g, u = switches
    expected_r, expected_v = reference_rewards(task_reward, costs, mask, BUDGETS[c], c, p, 1.7,
                                               g, pay, u)
    assert 0 < expected_v[mask].mean() < 1, switches  # the data has both outcomes
    np.testing.assert_array_equal(violated, expected_v, err_msg=str(switches))
    np.testing.assert_allclose(rewards, expected_r, rtol=1e-5, atol=1e-6, err_msg=str(switches))


def test_hand_computed_sum_and_prefix_mean():
  costs, mask = jnp.array([[0.5, 0.7, 0.2, 0.1]]), jnp.ones((1, 4))
  # z: 1 -> 0.5 -> -0.2 (violated from t = 1) ; scaled penalty -2 c_t.
  rewards, violated = cst.augmented_rewards(jnp.array([1.0]), costs, mask, budget=1.0,
                                            penalty="scaled", penalty_scale=2.0)
  np.testing.assert_allclose(rewards, [[0.0, -1.4, -0.4, -0.2]], rtol=1e-6)
  np.testing.assert_array_equal(violated, [[False, True, True, True]])
  rewards, _ = cst.augmented_rewards(jnp.array([1.0]), costs, mask, budget=1.0,
                                     penalty="scaled", penalty_scale=2.0,
                                     pay_reward_if_violated=True)
  np.testing.assert_allclose(rewards, [[0.0, -1.4, -0.4, 0.8]], rtol=1e-6)
  # In budget units at d = 0.5 the scaled penalty reads c_t / 0.5: -2 c_t / 0.5 from the
  # flag (z: 1 -> 0 -> -1.4 at t = 1); in nats -2 c_t. The default: -2 once, at t = 1.
  for units, unit in (("budget", 0.5), ("nats", 1.0)):
    rewards, _ = cst.augmented_rewards(jnp.array([1.0]), costs, mask, budget=0.5,
                                       penalty="scaled", penalty_scale=2.0, penalty_units=units)
    np.testing.assert_allclose(rewards, [[0.0, -1.4 / unit, -0.4 / unit, -0.2 / unit]],
                               rtol=1e-6)
  rewards, _ = cst.augmented_rewards(jnp.array([1.0]), costs, mask, budget=1.0,
                                     penalty_scale=2.0)
  np.testing.assert_allclose(rewards, [[0.0, -2.0, 0.0, 0.0]])
  # Running means 2, 1, 2/3, 1/2 against d = 1: violated at t = 0 and absorbing after.
  rewards, violated = cst.augmented_rewards(jnp.array([1.0]), jnp.array([[2.0, 0.0, 0.0, 0.0]]),
                                            mask, budget=1.0, constraint="prefix_mean",
                                            penalty="constant")
  np.testing.assert_allclose(rewards, [[-1.0, -1.0, -1.0, -1.0]])
  np.testing.assert_array_equal(violated, np.ones((1, 4), bool))


def test_violation_is_absorbing():
  for seed in range(3):
    task_reward, costs, mask = random_batch(seed + 10)
    for switches, (_, violated) in all_switches(task_reward, costs, mask).items():
      violated = np.asarray(violated)
      for b in range(costs.shape[0]):
        flags = violated[b][mask[b]]
        assert np.all(flags == np.maximum.accumulate(flags)), (seed, switches, b)
      assert not np.any(violated[~mask])


def test_padding_never_changes_results():
  """Row b holds the same 7 real tokens at offset b, surrounded by garbage costs."""
  rng = np.random.default_rng(3)
  real_costs, length = rng.uniform(-0.2, 1.0, size=7), 12
  costs = rng.normal(size=(6, length)) * 1e4
  mask = np.zeros((6, length), bool)
  for b in range(6):
    costs[b, b:b + 7], mask[b, b:b + 7] = real_costs, True
  costs[~mask & (rng.uniform(size=mask.shape) < 0.3)] = np.inf
  outputs = all_switches(np.full(6, 1.3), costs, mask)
  for switches, (rewards, violated) in outputs.items():
    rewards, violated = np.asarray(rewards), np.asarray(violated)
    assert np.all(rewards[~mask] == 0) and not np.any(violated[~mask])
    for b in range(1, 6):
      np.testing.assert_array_equal(rewards[b, b:b + 7], rewards[0, :7], err_msg=str(switches))
      np.testing.assert_array_equal(violated[b, b:b + 7], violated[0, :7], err_msg=str(switches))
  for c in CONSTRAINTS:
    np.testing.assert_allclose(cst.sequence_cost(costs, mask, c),
                               np.full(6, cst.sequence_cost(costs[:1], mask[:1], c)[0]), rtol=1e-6)
  returns = cst.discounted_returns(outputs[SWITCHES[0]][0], mask, 0.9)
  for b in range(1, 6):
    np.testing.assert_array_equal(returns[b, b:b + 7], returns[0, :7])


def test_under_budget_gets_exactly_the_task_reward_at_its_last_token():
  costs = np.array([[9.0, 0.1, 0.2, 0.3, 9.0, 9.0], [0.4, 0.4, 0.1, 9.0, 9.0, 9.0]])
  mask = np.array([[0, 1, 1, 1, 0, 0], [1, 1, 1, 0, 0, 0]])
  for c in CONSTRAINTS:
    rewards, violated = cst.augmented_rewards(np.array([0.7, -0.3]), costs, mask, budget=1.0,
                                              constraint=c)
    np.testing.assert_array_equal(rewards, np.float32([[0, 0, 0, 0.7, 0, 0],
                                                       [0, 0, -0.3, 0, 0, 0]]))
    assert not np.any(violated)


def test_jit_with_traced_budget():
  task_reward, costs, mask = random_batch(4)
  jitted = jax.jit(lambda d: cst.augmented_rewards(task_reward, costs, mask, budget=d))
  for d in (2.0, 3.5):
    expected_r, expected_v = reference_rewards(task_reward, costs, mask, d, "sum", "terminal",
                                               1.0, 1.0, False)
    rewards, violated = jitted(jnp.float32(d))
    np.testing.assert_allclose(rewards, expected_r, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(violated, expected_v)


def test_sequence_cost_and_satisfaction():
  task_reward, costs, mask = random_batch(5)
  for c in CONSTRAINTS:
    expected = []
    for b in range(costs.shape[0]):
      real = costs[b][mask[b]]
      expected.append({"sum": real.sum(), "mean": real.mean(),
                       "prefix_mean": max(real[:t + 1].mean() for t in range(len(real)))}[c])
    np.testing.assert_allclose(cst.sequence_cost(costs, mask, c), expected, rtol=1e-5)
    satisfied = np.asarray(cst.constraint_satisfied(costs, mask, BUDGETS[c], c))
    np.testing.assert_array_equal(satisfied, np.array(expected) <= BUDGETS[c])
    # Agrees with the reward's violation flag (undiscounted).
    _, violated = all_switches(task_reward, costs, mask)[(c, "scaled", False, 1.0,
                                                                  "budget")]
    np.testing.assert_array_equal(satisfied, ~np.asarray(violated).any(axis=1))
  np.testing.assert_array_equal(cst.sequence_cost(costs, np.zeros_like(mask), "prefix_mean"), 0)


def test_discounted_sequence_cost_matches_the_reward_flag_and_its_weights():
  """With gamma_c < 1 the constraint the reward enforces is the discounted one: sequence_cost
  (hand-written loops here) is <= d exactly when no token of the row is flagged."""
  task_reward, costs, mask = random_batch(11)
  gamma = 0.9
  outputs = all_switches(task_reward, costs, mask)
  for c in CONSTRAINTS:
    expected = []
    for b in range(costs.shape[0]):
      real = costs[b][mask[b]]
      disc = gamma ** np.arange(len(real))
      expected.append({"sum": (disc * real).sum(), "mean": (disc * real).sum() / len(real),
                       "prefix_mean": max((disc[:t + 1] * real[:t + 1]).sum() / disc[:t + 1].sum()
                                          for t in range(len(real)))}[c])
    got = cst.sequence_cost(costs, mask, c, gamma)
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    _, violated = outputs[(c, "scaled", False, gamma, "budget")]
    np.testing.assert_array_equal(np.asarray(got) <= BUDGETS[c], ~np.asarray(violated).any(1))
    w = np.asarray(cst.sequence_weights(costs, mask, c, gamma))
    assert np.all(w[~mask] == 0)
    np.testing.assert_allclose((w * np.where(mask, costs, 0)).sum(1), expected, rtol=1e-5)


def test_discounted_returns_match_python_loop():
  rng = np.random.default_rng(6)
  rewards = rng.normal(size=(3, 8))
  mask = np.array([[1] * 8, [0, 0, 1, 1, 0, 1, 1, 0], [0, 1, 1, 1, 1, 0, 0, 0]], bool)
  for gamma in (1.0, 0.9):
    expected = np.zeros_like(rewards)
    for b in range(3):
      tokens = [t for t in range(8) if mask[b, t]]
      for i, t in enumerate(tokens):
        expected[b, t] = sum(gamma**j * rewards[b, s] for j, s in enumerate(tokens[i:]))
    np.testing.assert_allclose(cst.discounted_returns(rewards, mask, gamma), expected, rtol=1e-5,
                               atol=1e-6)


def test_calibrate_budget():
  costs = np.random.default_rng(7).exponential(size=101)
  for q in (0.1, 0.5, 0.9):
    assert cst.calibrate_budget(costs, q) == pytest.approx(np.quantile(costs, q), rel=1e-12)
  d = cst.calibrate_budget(costs, 0.5)
  assert np.sum(costs > d) == 50  # half of the initial samples violate
  for q in (0.0, 1.0, 1.5):
    with pytest.raises(ValueError, match="quantile"):
      cst.calibrate_budget(costs, q)


def np_log_softmax(x):
  m = x.max(-1, keepdims=True)
  return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def test_token_costs_match_numpy():
  rng = np.random.default_rng(8)
  student, teacher = rng.normal(size=(2, 2, 4, 9)) * 2
  targets = rng.integers(0, 9, size=(2, 4))
  ls, lt = np_log_softmax(student), np_log_softmax(teacher)
  pick = lambda lp: np.take_along_axis(lp, targets[..., None], -1)[..., 0]
  expected = {"reverse_kl": np.sum(np.exp(ls) * (ls - lt), -1), "logratio": pick(ls) - pick(lt),
              "teacher_nll": -pick(lt)}
  for kind, value in expected.items():
    got = cst.token_costs(kind, student.astype(np.float32), teacher.astype(np.float32), targets)
    np.testing.assert_allclose(got, value, rtol=1e-5, atol=1e-6, err_msg=kind)
  # The teacher gets no gradient.
  grad = jax.grad(lambda t: cst.token_costs("reverse_kl", student, t, targets).sum())(teacher)
  np.testing.assert_array_equal(grad, 0)
  with pytest.raises(ValueError, match="reverse_kl, logratio, teacher_nll"):
    cst.token_costs("forward_kl", student, teacher, targets)


def test_bad_arguments():
  task_reward, costs, mask = random_batch(9)
  call = functools.partial(cst.augmented_rewards, task_reward, costs, mask)
  for budget in (0.0, -1.0):
    with pytest.raises(ValueError, match="budget"):
      call(budget=budget)
  with pytest.raises(ValueError, match="sum, mean, prefix_mean"):
    call(budget=1.0, constraint="max")
  with pytest.raises(ValueError, match="constant, scaled, constant_plus_scaled"):
    call(budget=1.0, penalty="linear")
  with pytest.raises(ValueError, match="cost_discount"):
    call(budget=1.0, cost_discount=1.5)
