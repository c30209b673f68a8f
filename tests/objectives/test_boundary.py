"""cmdp's boundary term (`loss.boundary_width`, docs/method.md, "The boundary term").

The population objective `J = E[R 1[C <= d] - n 1[C > d]]` (terminal penalty) has, beside
the score function with each response's flag held fixed, the term `-E[(R + n) delta(C - d)
grad C]` of its costs crossing `d`. cmdp adds its smoothed form `(R + n) k_h(C - d) w_t` on
the exact cost gradient, `k_h` the logistic kernel of width `h = beta d`. Checked here
against expressions written independently of cmdp:
  (a) by enumeration (tests/objectives/brute_force.py), the estimator's expected update is
      the flag-fixed score-function gradient minus `E[(R + n) k_h(C - d) grad C]`;
  (b) on a tree of 121 responses, the term is the derivative of the band-smoothed objective
      `E[R (1 - F_h(C - d)) - n F_h(C - d)]` through C alone (central differences);
  (c) `boundary_width = 0` is the cmdp of before, bitwise, with none of the term's ops.
"""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cmdp.objectives import ObjectiveConfig, cmdp_reward, get_objective
from tests.objectives import brute_force as bf
from tests.objectives import reference as ref
from tests.objectives.test_exact_gradient import expected_estimator_grad, with_budget
from tests.objectives.test_losses import B, G, MASK, cmdp_reference, make_batch, run, seq_sum


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


@pytest.mark.parametrize("group_size", [2, 3])
def test_expected_update_is_the_flag_fixed_score_minus_the_smoothed_boundary(group_size):
  """Shipped defaults (terminal penalty, beta = 0.1), EOS in play, temperature 0.7: the
  expected update equals `-(g_score - E[(R + n) k_h(C - d) grad C])`, `g_score` the
  score-function gradient with every flag held fixed (the terminal value has no other
  dependence on theta) and `grad C` jax.grad of each enumerated response's cost."""
  seed = 23
  hp = with_budget(ObjectiveConfig(group_size=group_size, temperature=0.7, penalty_scale=1.4),
                   seed)
  assert hp.boundary_width == 0.1 and hp.penalty == "terminal"  # the shipped default
  student, teacher, reward = bf.tables(seed)
  score = jax.grad(lambda p: bf.objective_value("cmdp", p, teacher, reward, hp))(student)
  h, d, n = hp.boundary_width * hp.budget, hp.budget, hp.penalty_scale
  boundary = np.zeros(student.shape)
  for i, y in enumerate(bf.RESPONSES):
    prob = float(np.exp(bf.response_logprob(student, y, hp.temperature)))
    cost_of = lambda p, y=y: bf.sequence_cost(bf.costs_of(hp.cost, p, teacher, y), "sum", 1.0)
    u = (float(cost_of(student)) - d) / h
    if abs(u) > 10:  # the kernel's support: 10 widths either side of d
      continue
    s = _sigmoid(u)
    boundary += prob * (float(reward[i]) + n) * s * (1 - s) / h * np.asarray(
        jax.grad(cost_of)(student))
  assert np.abs(boundary).max() > 0.05  # responses inside the band: the term matters
  got = expected_estimator_grad("cmdp", hp, student, teacher, reward)
  np.testing.assert_allclose(got, -(np.asarray(score) - boundary), rtol=2e-4, atol=2e-6)


def test_without_the_term_the_estimator_is_the_flag_fixed_gradient():
  """`boundary_width = 0`: the score function with the flags held fixed, as before."""
  hp = with_budget(ObjectiveConfig(group_size=2, temperature=0.7, boundary_width=0.0), 23)
  student, teacher, reward = bf.tables(23)
  got = expected_estimator_grad("cmdp", hp, student, teacher, reward)
  want = jax.grad(lambda p: -bf.objective_value("cmdp", p, teacher, reward, hp))(student)
  np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-6)


# (b) A larger tree: tokens {0, 1, 2} and EOS = 3, up to 4 tokens: 121 responses, 40 states.
TOKENS, EOS4, LEN4 = 3, 3, 4
TREE = ([(EOS4,)] + [p + (EOS4,) for k in (1, 2) for p in itertools.product(range(TOKENS), repeat=k)]
        + [p + (x,) for p in itertools.product(range(TOKENS), repeat=3) for x in range(TOKENS + 1)])
TREE_STATES = {s: i for i, s in enumerate(
    p for k in range(LEN4) for p in itertools.product(range(TOKENS), repeat=k))}


@pytest.mark.parametrize("width, pay", [(0.1, False), (0.5, True)])
def test_boundary_term_is_the_smoothed_objectives_derivative_through_the_cost(width, pay):
  """Through C alone (the responses' probabilities held fixed), the derivative of
  `E[R (1 - F_h(C - d)) - n F_h(C - d)]` (`E[(R - n) ... ]` with the reward paid anyway:
  the jump is n) by central differences in float64 equals the loss's boundary term."""
  rng = np.random.default_rng(4)
  student = rng.normal(size=(len(TREE_STATES), TOKENS + 1)) * 1.2
  teacher = rng.normal(size=(len(TREE_STATES), TOKENS + 1)) * 1.2
  reward = rng.uniform(size=len(TREE))
  states = np.array([[TREE_STATES[y[:t]] if t < len(y) else 0 for t in range(LEN4)]
                     for y in TREE])
  mask = np.array([[t < len(y) for t in range(LEN4)] for y in TREE], np.float64)
  targets = np.array([list(y) + [0] * (LEN4 - len(y)) for y in TREE])
  logp = (ref.log_softmax(student)[states, targets] * mask).sum(-1)
  prob = np.exp(logp)
  np.testing.assert_allclose(prob.sum(), 1.0, rtol=1e-9)

  def seq_costs(table):
    return (ref.kl(table, teacher)[states] * mask).sum(-1)

  budget = float(np.median(seq_costs(student)))
  hp = ObjectiveConfig(budget=budget, group_size=1, advantage="none", penalty_scale=1.5,
                       boundary_width=width, pay_reward_if_violated=pay)
  h, n = width * budget, hp.penalty_scale

  def smoothed(table):  # float64, probabilities at the base point
    f = _sigmoid((seq_costs(table) - budget) / h)
    kept = reward if pay else reward * (1 - f)
    return float(prob @ (kept - n * f))

  eps, fd = 1e-5, np.zeros(student.shape)
  for idx in np.ndindex(*student.shape):
    step = np.zeros(student.shape)
    step[idx] = eps
    fd[idx] = (smoothed(student + step) - smoothed(student - step)) / (2 * eps)

  f32 = lambda x: jnp.asarray(x, jnp.float32)
  rows = dict(targets=jnp.asarray(targets, jnp.int32)[:, None], mask=f32(mask)[:, None],
              task_reward=f32(reward)[:, None], teacher=f32(teacher[states])[:, None],
              states=jnp.asarray(states)[:, None])

  def row_grad(config, row):
    def loss(table):
      logits = table[row["states"]]
      old = jnp.take_along_axis(jax.nn.log_softmax(jax.lax.stop_gradient(logits)),
                                row["targets"][..., None], -1)[..., 0]
      batch = dict(targets=row["targets"], mask=row["mask"], old_logprobs=old * row["mask"],
                   task_reward=row["task_reward"], num_tokens=row["mask"].sum(),
                   num_sequences=jnp.float32(1))
      return cmdp_reward.cmdp_loss(logits, row["teacher"], batch, config)[0]
    return jax.grad(loss)(f32(student))

  with_term = jax.vmap(lambda r: row_grad(hp, r))(rows)
  without = jax.vmap(lambda r: row_grad(hp.replace(boundary_width=0.0), r))(rows)
  term = np.tensordot(prob, np.asarray(with_term - without, np.float64), axes=1)
  assert np.abs(fd).max() > 0.01
  cosine = -(term * fd).sum() / np.linalg.norm(term) / np.linalg.norm(fd)
  assert cosine > 1 - 1e-5, cosine
  np.testing.assert_allclose(term, -fd, rtol=1e-3, atol=1e-4 * np.abs(fd).max())


def _value_grad_jaxpr(hp, params, batch):
  fn = lambda p: run("cmdp", hp, p, batch)
  out = jax.value_and_grad(fn, has_aux=True)(params)
  return out, str(jax.make_jaxpr(fn)(params))


def test_zero_width_is_the_previous_cmdp_bitwise(monkeypatch):
  """`boundary_width = 0`: loss, gradient and metrics bitwise those of the estimator with
  the term cut out at its source (a positive width whose `boundary_coef` answers None),
  the same program op for op, and the numpy reference of cmdp without the term."""
  params, batch, a = make_batch()
  costs = ref.kl(a["logits"], a["teacher"])
  hp = ObjectiveConfig(group_size=G, budget=float(np.median(seq_sum(costs))))
  off = hp.replace(boundary_width=0.0)
  ((loss0, metrics0), grad0), program0 = _value_grad_jaxpr(off, params, batch)
  ((loss1, metrics1), grad1), _ = _value_grad_jaxpr(hp, params, batch)
  assert "boundary_weight" not in metrics0 and metrics1["boundary_weight"] > 0
  assert np.abs(np.asarray(grad1["logits"] - grad0["logits"])).max() > 1e-3  # the term is on

  monkeypatch.setattr(cmdp_reward, "boundary_coef", lambda *args: None)
  ((loss2, metrics2), grad2), program2 = _value_grad_jaxpr(hp, params, batch)
  assert program0 == program2
  assert np.asarray(loss0).tobytes() == np.asarray(loss2).tobytes()
  assert np.asarray(grad0["logits"]).tobytes() == np.asarray(grad2["logits"]).tobytes()
  assert metrics0.keys() == metrics2.keys()
  for key in metrics0:
    assert np.asarray(metrics0[key]).tobytes() == np.asarray(metrics2[key]).tobytes(), key
  want, _ = cmdp_reference(a, costs, off, 0.0, costs)
  np.testing.assert_allclose(loss0, want, rtol=1e-5, atol=1e-6)


def test_boundary_weight_metric_is_the_mean_kernel_weight_per_sequence():
  params, batch, a = make_batch(5)
  costs = ref.kl(a["logits"], a["teacher"])
  hp = ObjectiveConfig(group_size=G, budget=float(np.median(seq_sum(costs))), penalty_scale=2.0)
  _, metrics = run("cmdp", hp, params, batch)
  _, weight = ref.boundary_coefficients(a["task_reward"], costs, MASK, hp.budget,
                                        hp.boundary_width, "terminal", 2.0, False)
  assert weight.max() > 0
  np.testing.assert_allclose(metrics["boundary_weight"], weight.sum() / B, rtol=1e-5)


def test_boundary_width_is_validated_and_read_by_cmdp_only():
  with pytest.raises(ValueError, match=r"boundary_width=-0.5: must be >= 0 \(0 = off\)"):
    ObjectiveConfig(boundary_width=-0.5)
  get_objective("cmdp").check_fields(ObjectiveConfig(boundary_width=0.3))
  for name, preset in (("cmdp_hinge", {}), ("worst_case", cmdp_reward.WORST_CASE_PRESET)):
    with pytest.raises(ValueError, match=rf"boundary_width=0.3 is set, but objective '{name}'"):
      get_objective(name).check_fields(ObjectiveConfig(boundary_width=0.3, **preset))


def test_a_response_beyond_the_kernels_support_carries_no_boundary_gradient():
  """10 widths from d the kernel is cut off: a group whose responses all lie beyond it (and
  whose returns tie) has a gradient of exactly 0, so its step is skipped, not nudged."""
  costs = jnp.asarray([[0.45, 0.45, 0.0], [0.2, 0.2, 0.2], [1.0, 1.0, 1.0]], jnp.float32)
  mask = jnp.asarray([[1, 1, 0], [1, 1, 1], [1, 1, 1]], jnp.float32)
  hp = ObjectiveConfig(budget=0.5, boundary_width=0.1, group_size=1)  # h = 0.05
  coef, weight = cmdp_reward.boundary_coef(jnp.zeros(3), costs, mask, 0.0, hp)
  # C = 0.9 (u = 8: inside, by hand 1 x s(1 - s) / h), 0.6 (u = 2), 3.0 (u = 50: outside).
  s8, s2 = _sigmoid(8.0), _sigmoid(2.0)
  np.testing.assert_allclose(weight, [s8 * (1 - s8) / 0.05, s2 * (1 - s2) / 0.05, 0.0],
                             rtol=2e-3)
  assert not np.asarray(coef[2]).any()
