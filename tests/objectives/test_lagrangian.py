"""Dual ascent on lambda, both readings of the constraint, on scripted violations (hand-computed)."""
import jax
import numpy as np
import pytest

from cmdp.objectives import ObjectiveConfig, get_objective, init_lambda_state, update_lambda

update = jax.jit(update_lambda, static_argnums=2)


def trajectory(hp, steps):
  """lambda after each update, from scripted (mean cost, satisfaction) pairs."""
  state, out = init_lambda_state(hp), []
  for cost, sat in steps:
    state = update(state, {"constraint_value": np.float32(cost),
                           "constraint_satisfaction": np.float32(sat)}, hp)
    out.append(float(state.lam))
  return out, state


def test_mean_target_moves_lambda_d_by_the_relative_violation():
  # d = 2, lr = 1: lambda * d moves by (C - d) / d per update: C = 4 -> +1, i.e. lambda += 0.5.
  hp = ObjectiveConfig(budget=2.0, dual_target="mean")
  lams, state = trajectory(hp, [(4.0, 0.0)] * 3 + [(1.0, 1.0)] * 4)
  np.testing.assert_allclose(lams, [0.5, 1.0, 1.5, 1.25, 1.0, 0.75, 0.5], rtol=1e-6)
  assert int(state.step) == 7


def test_rate_target_reaches_a_useful_lambda_in_a_few_updates():
  # d = 0.5, delta0 = 0.1, lr = 1: all samples violating raises lambda * d by 0.9 per update,
  # so after 2 updates a response at the budget pays 1.8 reward units (lambda = 3.6).
  hp = ObjectiveConfig(budget=0.5, dual_target="rate", violation_target=0.1)
  lams, _ = trajectory(hp, [(9.0, 0.0), (9.0, 0.0), (0.1, 0.9), (0.1, 1.0), (0.1, 1.0)])
  np.testing.assert_allclose(lams, [1.8, 3.6, 3.6, 3.4, 3.2], rtol=1e-6)


def test_projection_at_zero_cap_and_warmup():
  hp = ObjectiveConfig(budget=1.0, lambda_init=0.3, lambda_max=1.0, lambda_warmup_steps=2,
                       lambda_lr=0.5)
  lams, _ = trajectory(hp, [(3.0, 0.0)] * 4 + [(0.0, 1.0)] * 5)
  # warm-up keeps 0.3 twice; then +1.0 per update (0.5 * (3 - 1) / 1) capped at 1.0;
  # then -0.5 per update, projected at 0.
  np.testing.assert_allclose(lams, [0.3, 0.3, 1.0, 1.0, 0.5, 0.0, 0.0, 0.0, 0.0], atol=1e-7)


def test_state_is_owned_by_the_objective():
  dual, soft = get_objective("dual_lagrangian"), get_objective("soft_lagrangian")
  hp = ObjectiveConfig(lambda_init=0.25, soft_lambda=0.5)
  assert float(dual.state_metrics(dual.init_state(hp), hp)["lambda"]) == 0.25
  assert float(soft.state_metrics(soft.init_state(hp), hp)["lambda"]) == 0.5
  for name in ("cmdp", "grpo", "gkd", "minillm", "sft", "worst_case"):
    obj = get_objective(name)
    assert obj.init_state(hp) is None and obj.state_metrics(None, hp) == {}


@pytest.mark.parametrize("field,value", [("dual_target", "max"), ("violation_target", 1.0)])
def test_bad_dual_fields_are_named(field, value):
  with pytest.raises(ValueError, match=f"ObjectiveConfig.{field}"):
    ObjectiveConfig(**{field: value})
