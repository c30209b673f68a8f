"""Projected dual ascent on log(lambda) against the closed form lambda_k = lambda_0 e^(k lr v/d)."""
import jax
import numpy as np

from cmdp.objectives import ObjectiveConfig, init_lambda_state, lambda_value, update_lambda

HP = ObjectiveConfig(budget=2.0, lambda_init=0.1, lambda_lr=0.5, lambda_max=1.0,
                     lambda_floor=0.01)
update = jax.jit(update_lambda, static_argnums=2)


def trajectory(hp, violations):
  state, out = init_lambda_state(hp), []
  for v in violations:
    state = update(state, np.float32(v), hp)
    out.append(float(lambda_value(state)))
  return out, state


def test_rises_geometrically_when_violated_and_respects_the_cap():
  # violation +1 with budget 2: log(lambda) grows by 0.5 * 1 / 2 = 0.25 per step.
  lams, state = trajectory(HP, [1.0] * 12)
  want = np.minimum(0.1 * np.exp(0.25 * np.arange(1, 13)), 1.0)
  np.testing.assert_allclose(lams, want, rtol=1e-5)
  assert lams[-1] == 1.0 and lams[8] < 1.0 <= lams[9]  # 0.1 e^2.5 > 1: capped from step 10
  assert int(state.step) == 12


def test_falls_to_exactly_zero_when_slack_and_restarts_from_the_floor():
  # violation -2 (cost 0 against budget 2): log(lambda) shrinks by 0.5 per step; the floor
  # 0.01 is crossed at step 5 (0.1 e^-2 = 0.0135 > 0.01 > 0.1 e^-2.5 = 0.0082).
  lams, state = trajectory(HP, [-2.0] * 7)
  np.testing.assert_allclose(lams[:4], 0.1 * np.exp(-0.5 * np.arange(1, 5)), rtol=1e-5)
  assert lams[4:] == [0.0, 0.0, 0.0]
  state = update(state, np.float32(1.0), HP)  # violated again: 0.01 e^0.25
  np.testing.assert_allclose(float(lambda_value(state)), 0.01 * np.exp(0.25), rtol=1e-5)


def test_no_update_during_warmup():
  hp = HP.replace(lambda_warmup_steps=3)
  lams, state = trajectory(hp, [1.0] * 5)
  np.testing.assert_allclose(lams, [0.1, 0.1, 0.1, 0.1 * np.exp(0.25), 0.1 * np.exp(0.5)],
                             rtol=1e-5)
  assert int(state.step) == 5


def test_zero_init_stays_zero_until_violated():
  hp = HP.replace(lambda_init=0.0)
  lams, _ = trajectory(hp, [-1.0, 0.0, 2.0])
  np.testing.assert_allclose(lams, [0.0, 0.0, 0.01 * np.exp(0.5)], rtol=1e-5)
  assert lams[0] == 0.0 and lams[1] == 0.0
