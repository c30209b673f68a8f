"""The policy-gradient core against hand-computed values and the numpy reference."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cmdp.objectives import policy_gradient as pg

from . import reference as ref


@pytest.mark.parametrize("mode", ["grpo", "loo", "none"])
def test_group_baseline_matches_numpy(mode):
  values = np.random.default_rng(0).normal(size=12)
  baseline = pg.group_baseline(jnp.asarray(values, jnp.float32), 4, mode)
  np.testing.assert_allclose(baseline, ref.group_baseline(values, 4, mode), rtol=1e-5, atol=1e-6)


def test_group_baseline_by_hand():
  v = jnp.array([1.0, 2.0, 6.0])
  np.testing.assert_allclose(pg.group_baseline(v, 3, "grpo"), [3, 3, 3])
  np.testing.assert_allclose(pg.group_baseline(v, 3, "loo"), [4.0, 3.5, 1.5])


def test_group_baseline_rejects_partial_groups_and_singletons():
  with pytest.raises(ValueError, match="whole number of groups"):
    pg.group_baseline(jnp.zeros(5), 2, "grpo")
  with pytest.raises(ValueError, match="group_size >= 2"):
    pg.group_baseline(jnp.zeros(4), 1, "loo")


def test_rms_scale_by_hand():
  # Group 1: advantages 3 and 4 on one token each, rms 5/sqrt(2); group 2: all zero -> 1.
  adv = jnp.array([[3.0, 9.0], [4.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
  mask = jnp.array([[1.0, 0.0], [1.0, 0.0], [1.0, 1.0], [1.0, 0.0]])
  np.testing.assert_allclose(pg.group_rms_scale(adv, mask, 2),
                             [5 / np.sqrt(2)] * 2 + [1.0, 1.0], rtol=1e-6)


def degenerate_batch():
  """Two groups in which every sample is violated at the same (second) token under a
  constant penalty: equal sequence returns G0 = -2, per-token returns -2, -2, -1 (group 1), and
  a group whose returns are all equal (group 2)."""
  mask = jnp.array([[1.0, 1.0, 1.0, 0.0]] * 4)
  rewards = jnp.array([[0.0, -1.0, -1.0, 0.0], [0.0, -1.0, -1.0, 0.0],
                       [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
  batch = dict(mask=mask, old_logprobs=jnp.zeros((4, 4)), num_tokens=mask.sum(),
               num_sequences=jnp.float32(4))
  return rewards, batch


@pytest.mark.parametrize("normalize_std", [False, True])
@pytest.mark.parametrize("mode", ["loo", "grpo"])
def test_advantages_are_bounded_in_degenerate_groups(normalize_std, mode):
  """Equal G0 with different per-token returns: the advantages stay on the rewards' scale
  (G0's std is 0 there; dividing by it made them ~1e6)."""
  from cmdp.objectives import ObjectiveConfig
  rewards, batch = degenerate_batch()
  hp = ObjectiveConfig(group_size=2, advantage=mode, normalize_std=normalize_std)
  logp = jnp.zeros((4, 4))
  _, metrics = pg.policy_gradient_loss(logp, batch, rewards, hp)
  # Unscaled: token returns -2, -2, -1 minus the baseline -2 -> 0, 0, 1 (group 1); 0 (group 2).
  want_abs = 2 / 12
  if normalize_std:
    want_abs = want_abs / np.sqrt(2 / 6)  # group 1's RMS over its 6 tokens
  np.testing.assert_allclose(metrics["advantage_abs_mean"], want_abs, rtol=1e-5)
  grad = jax.grad(lambda lp: pg.policy_gradient_loss(lp, batch, rewards, hp)[0])(logp)
  assert np.abs(np.asarray(grad)).max() <= np.sqrt(6) / 4 + 1e-6  # |A| <= sqrt(group tokens)


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
