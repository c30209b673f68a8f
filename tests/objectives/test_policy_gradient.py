"""The policy-gradient core against hand-computed values and the numpy reference."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cmdp.objectives import policy_gradient as pg

from . import reference as ref


@pytest.mark.parametrize("mode", ["grpo", "loo", "none"])
@pytest.mark.parametrize("normalize_std", [True, False])
def test_group_baseline_matches_numpy(mode, normalize_std):
  values = np.random.default_rng(0).normal(size=12)
  baseline, scale = pg.group_baseline(jnp.asarray(values, jnp.float32), 4, mode, normalize_std)
  want_b, want_s = ref.group_baseline(values, 4, mode, normalize_std)
  np.testing.assert_allclose(baseline, want_b, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(scale, want_s, rtol=1e-5, atol=1e-6)


def test_group_baseline_by_hand():
  # One group [1, 2, 6]: mean 3, std (ddof=1) sqrt(((4 + 1 + 9) / 2)) = sqrt(7).
  v = jnp.array([1.0, 2.0, 6.0])
  b, s = pg.group_baseline(v, 3, "grpo", True)
  np.testing.assert_allclose(b, [3, 3, 3])
  np.testing.assert_allclose(s, [np.sqrt(7) + 1e-6] * 3, rtol=1e-6)
  b, _ = pg.group_baseline(v, 3, "loo", False)
  np.testing.assert_allclose(b, [4.0, 3.5, 1.5])


def test_group_baseline_rejects_partial_groups_and_singletons():
  with pytest.raises(ValueError, match="whole number of groups"):
    pg.group_baseline(jnp.zeros(5), 2, "grpo", True)
  with pytest.raises(ValueError, match="group_size >= 2"):
    pg.group_baseline(jnp.zeros(4), 1, "loo", True)


def test_ppo_clip_by_hand():
  # ratios 1.5, 0.5, 1.1, 0.7; advantages 1, 1, -1, -1; eps 0.2.
  ratio = jnp.array([[1.5, 0.5, 1.1, 0.7]])
  adv = jnp.array([[1.0, 1.0, -1.0, -1.0]])
  mask = jnp.ones((1, 4))
  old = jnp.zeros((1, 4))
  fn = lambda logp: pg.ppo_clip(logp, old, adv, mask, 0.2)
  loss, r, clipped = fn(jnp.log(ratio))
  np.testing.assert_allclose(loss, [[-1.2, -0.5, 1.1, 0.8]], rtol=1e-6)
  np.testing.assert_allclose(r, ratio, rtol=1e-6)
  np.testing.assert_array_equal(clipped, [[1, 0, 0, 1]])
  # d loss / d logp = -rho A where unclipped, 0 where clipped.
  grad = jax.grad(lambda lp: fn(lp)[0].sum())(jnp.log(ratio))
  np.testing.assert_allclose(grad, [[0.0, -0.5, 1.1, 0.0]], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("aggregation,full,local", [
    ("token_mean", 7 / 6, 7 / 3),
    ("sequence_mean", 7 / 4, 7 / 2),
    ("sequence_mean_token_mean", 5.5 / 4, 5.5 / 2),
])
def test_aggregate_by_hand(aggregation, full, local):
  values = jnp.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
  mask = jnp.array([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
  # Full batch of 6 tokens and 4 sequences, of which this microbatch holds 3 and 2.
  np.testing.assert_allclose(pg.aggregate(values, mask, aggregation, 6.0, 4.0), full, rtol=1e-6)
  np.testing.assert_allclose(pg.aggregate(values, mask, aggregation, 3.0, 2.0), local, rtol=1e-6)


def test_last_token_rewards_and_sequence_returns():
  mask = jnp.array([[0.0, 1.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
  r = pg.last_token_rewards(jnp.array([2.0, 3.0, 4.0]), mask)
  np.testing.assert_array_equal(r, [[0, 0, 2, 0], [0, 0, 0, 3], [0, 0, 0, 0]])
  returns = jnp.array([[9.0, 5.0, 6.0, 7.0], [1.0, 2.0, 3.0, 4.0], [1.0, 1.0, 1.0, 1.0]])
  np.testing.assert_array_equal(pg.sequence_returns(returns, mask), [5.0, 1.0, 0.0])
