"""Every policy-gradient estimator's expected gradient against brute force, under the
shipped `ObjectiveConfig` defaults (leave-one-out baseline, no std scale, sequence_mean).

A tabular policy over {a, b, EOS} with responses of 1 to 3 tokens (tests/objectives/
brute_force.py). For groups of G samples, the estimator's expected gradient
`sum_{y_1..y_G} prod_i pi(y_i) grad loss(y_1..y_G)` (every ordered group enumerated, ratio
at 1) must equal `-grad J(theta)`, with J the objective's expected value written out with
loops over tokens; for `advantage="grpo"` it must be `(G-1)/G` times that (same direction).
For cmdp, J holds each response's flags fixed, and the boundary term (`boundary_width`, on
by default) adds the gradient of the jumps where they fire, smoothed over a band of
`h = beta d`, written from its definition (`brute_force.smoothed_flags_value`; its terminal
form by hand in test_boundary.py).
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cmdp.objectives import ObjectiveConfig, get_objective
from tests.objectives import brute_force as bf

RESPONSE_ROWS = bf.rows(bf.RESPONSES)


def expected_estimator_grad(name, hp, student, teacher, reward, state=None):
  """sum over ordered groups of prod_i pi(y_i) * grad loss(group)."""
  return estimator_moments(name, hp, student, teacher, reward, state)[0]


def estimator_moments(name, hp, student, teacher, reward, state=None):
  """The estimator's mean gradient and mean squared norm over every ordered group, and
  every group's gradient `[M, ...]`."""
  targets, mask, states = (jnp.asarray(x) for x in RESPONSE_ROWS)
  fn = get_objective(name).loss_fn
  probs = jnp.exp(jnp.stack([bf.response_logprob(student, y, hp.temperature)
                             for y in bf.RESPONSES]))
  np.testing.assert_allclose(float(probs.sum()), 1.0, rtol=1e-5)
  idx = jnp.asarray(bf.groups(hp.group_size))

  def one(group):
    t, m, s = targets[group], mask[group], states[group]

    def loss(table):
      logits = table[s]
      old = jnp.take_along_axis(jax.nn.log_softmax(jax.lax.stop_gradient(logits)
                                                   / hp.temperature), t[..., None], -1)[..., 0]
      batch = dict(targets=t, mask=m, old_logprobs=old * m, task_reward=reward[group],
                   num_tokens=m.sum(), num_sequences=jnp.float32(hp.group_size))
      return fn(logits, teacher[s], batch, hp, state)[0]
    return jax.grad(loss)(student)

  grads = jax.jit(jax.vmap(one))(idx)
  weights = jnp.prod(probs[idx], axis=-1)
  square = jnp.sum(jnp.square(grads).reshape(len(grads), -1), axis=-1)
  return jnp.tensordot(weights, grads, axes=1), float(weights @ square), grads


def true_grad(name, hp, student, teacher, reward, lam=0.0):
  """`-grad J` of the objective with its flags held fixed; for cmdp plus its boundary term
  (`loss.boundary_width`, docs/method.md): the pathwise gradient of the jumps where the
  flags fire, smoothed over a band of `h = beta d`."""
  grad = jax.grad(lambda p: -bf.objective_value(name, p, teacher, reward, hp, lam))(student)
  if name == "cmdp" and hp.boundary_width > 0:
    grad = grad + jax.grad(lambda p: bf.smoothed_flags_value(p, teacher, reward, hp,
                                                             hp.boundary_width))(student)
  return grad


def budget_between_costs(kind, constraint, discount, student, teacher, quantile=0.5):
  """A budget between the responses' costs (never at one), so some violate and some do
  not: halfway between two neighbouring costs at about `quantile`."""
  all_costs = bf.sequence_costs_np(kind, student, teacher, constraint, discount)
  costs = np.unique(np.round(all_costs[all_costs > 0], 5))  # budgets are positive
  mid = max(1, int(quantile * len(costs)))
  budget = float(0.5 * (costs[mid - 1] + costs[mid]))
  assert np.any(all_costs > budget) and np.any(all_costs < budget)
  return budget


def check(name, hp, seed, factor=1.0, lam=0.0, state=None):
  student, teacher, reward = bf.tables(seed)
  got = expected_estimator_grad(name, hp, student, teacher, reward, state)
  want = true_grad(name, hp, student, teacher, reward, lam)
  assert float(jnp.abs(want).max()) > 1e-2
  np.testing.assert_allclose(got, factor * want, rtol=2e-4, atol=2e-6)


def with_budget(hp, seed):
  student, teacher, _ = bf.tables(seed)
  return hp.replace(budget=budget_between_costs(hp.cost, hp.constraint, hp.cost_discount, student,
                                         teacher))


CMDP_CASES = [  # (cost, constraint, penalty, units): every cost, constraint, penalty, unit
    ("reverse_kl", "sum", "terminal", "budget"), ("reverse_kl", "sum", "scaled", "budget"),
    ("reverse_kl", "sum", "scaled", "nats"), ("reverse_kl", "sum", "constant_plus_scaled", "budget"),
    ("reverse_kl", "sum", "constant", "budget"), ("reverse_kl", "mean", "scaled", "budget"),
    ("reverse_kl", "prefix_mean", "scaled", "budget"),  # d T reads the length: not causal
    ("reverse_kl", "prefix_mean", "scaled", "nats"), ("reverse_kl", "prefix_mean", "terminal", "budget"),
    ("logratio", "sum", "scaled", "budget"), ("logratio", "mean", "constant_plus_scaled", "nats"),
    ("logratio", "prefix_mean", "scaled", "budget"), ("logratio", "sum", "terminal", "budget"),
    ("teacher_nll", "sum", "scaled", "budget"), ("teacher_nll", "mean", "constant", "budget"),
    ("teacher_nll", "sum", "terminal", "budget"),
]


@pytest.mark.parametrize("cost, constraint_, penalty, units", CMDP_CASES)
def test_cmdp_expected_gradient_under_the_defaults(cost, constraint_, penalty, units):
  hp = with_budget(ObjectiveConfig(group_size=2, cost=cost, constraint=constraint_,
                                   penalty=penalty, penalty_scale=1.7, penalty_units=units),
                   seed=3)
  check("cmdp", hp, seed=3)


@pytest.mark.parametrize("cost, constraint_, units", [
    ("reverse_kl", "sum", "budget"), ("reverse_kl", "mean", "nats"),
    ("reverse_kl", "prefix_mean", "budget"), ("logratio", "sum", "budget"),
    ("teacher_nll", "prefix_mean", "budget")])
def test_cmdp_hinge_is_unbiased_for_its_objective(cost, constraint_, units):
  """Sauté's withheld reward minus n (C - d)_+ / d: the estimator's expectation is the
  true gradient, pathwise subgradient (n/d) grad C on every token of a violating response
  included."""
  hp = with_budget(ObjectiveConfig(group_size=2, cost=cost, constraint=constraint_,
                                   penalty_scale=1.3, penalty_units=units), seed=21)
  check("cmdp_hinge", hp, seed=21)


def test_cmdp_unbiased_with_temperature_discount_groups_of_three_and_paid_reward():
  hp = with_budget(ObjectiveConfig(group_size=3, temperature=0.7, cost_discount=0.8,
                                   pay_reward_if_violated=True, penalty_scale=0.6), seed=5)
  check("cmdp", hp, seed=5)


def test_worst_case_preset_is_unbiased():
  hp = with_budget(ObjectiveConfig(group_size=2, cost="teacher_nll", constraint="prefix_mean",
                                   penalty="constant"), seed=7)
  check("worst_case", hp, seed=7)


@pytest.mark.parametrize("group_size", [2, 3])
def test_grpo_advantage_shrinks_every_term_by_the_same_factor(group_size):
  """The self-inclusive baseline: (G-1)/G times the true gradient, exact terms included."""
  hp = with_budget(ObjectiveConfig(group_size=group_size, advantage="grpo"), seed=9)
  check("cmdp", hp, seed=9, factor=(group_size - 1) / group_size)


def test_grpo_objective_is_unbiased():
  check("grpo", ObjectiveConfig(group_size=2, temperature=0.8), seed=11)


@pytest.mark.parametrize("cost, constraint_", [("reverse_kl", "sum"), ("reverse_kl", "mean"),
                                               ("logratio", "prefix_mean")])
def test_soft_lagrangian_is_unbiased_for_its_sequence_cost(cost, constraint_):
  hp = ObjectiveConfig(group_size=2, cost=cost, constraint=constraint_, soft_lambda=0.7,
                       cost_discount=0.9)
  check("soft_lagrangian", hp, seed=13, lam=0.7)


def test_dual_lagrangian_uses_its_state():
  from cmdp.objectives import LambdaState
  hp = ObjectiveConfig(group_size=2)
  state = LambdaState(lam=jnp.float32(1.3), step=jnp.int32(4))
  check("dual_lagrangian", hp, seed=17, lam=1.3, state=state)


def test_minillm_is_unbiased():
  check("minillm", ObjectiveConfig(group_size=2, temperature=0.9), seed=19)


@pytest.mark.parametrize("penalty", ["scaled", "constant_plus_scaled"])
def test_cmdp_scaled_penalty_in_budget_units_under_prefix_mean_weighs_the_whole_return(penalty):
  """Under prefix_mean a scaled penalty in budget units divides by d T: an early token's
  penalty reads the final length, so the estimator must weigh every token by the whole
  return. With a budget under the first state's cost every response violates from its
  first token, whose penalty then depends on whether the second token ends the response."""
  student, teacher, _ = bf.tables(3)
  first = float(bf.kl_row(student[0], teacher[0]))
  hp = ObjectiveConfig(group_size=2, constraint="prefix_mean", penalty=penalty,
                       penalty_scale=1.7, budget=0.5 * first)
  check("cmdp", hp, seed=3)


@pytest.mark.parametrize("cost", ["reverse_kl", "logratio", "teacher_nll"])
def test_terminal_penalty_settled_tokens_keep_the_mean_and_cut_the_variance(cost, monkeypatch):
  """Once the state fixes the flag, the terminal penalty's return to go is known (-n at the
  flag, 0 after), and the estimator gives those tokens no advantage. By enumeration: the
  same expected gradient as the group baseline alone (the true one) and a smaller second
  moment, since the dropped terms have mean zero given their state."""
  from cmdp.objectives import cmdp_reward
  student, teacher, reward = bf.tables(3)
  # A low budget: most responses overshoot, many with tokens after their flag.
  hp = ObjectiveConfig(group_size=2, cost=cost, penalty_scale=3.0, budget=budget_between_costs(
      cost, "sum", 1.0, student, teacher, quantile=0.2))
  mean, square, _ = estimator_moments("cmdp", hp, student, teacher, reward)
  monkeypatch.setattr(cmdp_reward, "settled_tokens", lambda *args: None)
  old_mean, old_square, _ = estimator_moments("cmdp", hp, student, teacher, reward)
  np.testing.assert_allclose(mean, old_mean, rtol=2e-4, atol=2e-6)
  np.testing.assert_allclose(mean, true_grad("cmdp", hp, student, teacher, reward),
                             rtol=2e-4, atol=2e-6)
  assert square < 0.995 * old_square, (square, old_square)


def test_terminal_penalty_group_that_all_overshoots_at_its_first_token_carries_no_signal():
  """A budget under the first state's KL: every response's flag fires at its first token,
  every return is -n, whatever follows: each group's gradient is exactly zero (without the
  known values, its later tokens were pushed up by n against the baseline -n). The score
  part alone: the boundary term (off here) weighs costs 10 bands over d by about 4e-5."""
  student, teacher, reward = bf.tables(3)
  first = float(bf.kl_row(student[0], teacher[0]))
  hp = ObjectiveConfig(group_size=2, budget=0.5 * first, penalty_scale=3.0, boundary_width=0.0)
  _, square, grads = estimator_moments("cmdp", hp, student, teacher, reward)
  assert square == 0.0 and float(jnp.abs(grads).max()) == 0.0
