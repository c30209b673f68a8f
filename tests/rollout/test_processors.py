"""The two-level argmax and inverse-CDF draw over vocabularies of several 128-token blocks."""
import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

from cmdp.rollout import processors


def test_argmax_equals_numpy_with_ties_and_padding():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(6, 300)).astype(np.float32)  # 300: three blocks, the last one padded
  x[1, 5] = x[1, 290] = 9.0  # tie across blocks: the first index wins
  x[2, 130] = x[2, 131] = 9.0  # tie inside a block
  x[3, :] = -np.inf
  x[3, 299] = 0.0  # the maximum in the padded block
  x[4, :] = 1.0  # all equal
  np.testing.assert_array_equal(jax.jit(processors.argmax)(x), np.argmax(x, -1))


def test_categorical_matches_the_distribution():
  """40k draws per row from three rows of a 300-token vocabulary (one with most tokens cut to
  -inf, one with all mass in the padded last block) against the exact probabilities."""
  rng = np.random.default_rng(1)
  v, n = 300, 40_000
  logp = rng.normal(size=(3, v)).astype(np.float32) * 1.5
  logp[1, rng.permutation(v)[:280]] = -np.inf  # 20 tokens left, spread over the blocks
  logp[2, :256] = -np.inf  # only the last (padded) block
  draw = jax.jit(jax.vmap(processors.categorical, in_axes=(0, None)))
  tokens = np.asarray(draw(jax.random.split(jax.random.key(0), n), logp))  # [n, 3]
  probs = np.exp(logp - logp.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  for row in range(3):
    counts = np.bincount(tokens[:, row], minlength=v)
    assert counts[probs[row] == 0].sum() == 0
    expected = n * probs[row]
    big = expected >= 5
    obs = np.append(counts[big], counts[~big].sum())
    exp = np.append(expected[big], expected[~big].sum())
    obs, exp = obs[exp > 0], exp[exp > 0]
    chi2 = ((obs - exp) ** 2 / exp).sum()
    assert chi2 < stats.chi2.ppf(0.999, len(obs) - 1), (row, chi2, len(obs))


def test_categorical_one_token_and_reproducible():
  logp = jnp.full((4, 200), -jnp.inf).at[jnp.arange(4), jnp.array([0, 127, 128, 199])].set(0.0)
  key = jax.random.key(3)
  np.testing.assert_array_equal(processors.categorical(key, logp), [0, 127, 128, 199])
  x = jax.random.normal(jax.random.key(4), (8, 1000))
  np.testing.assert_array_equal(processors.categorical(key, x), processors.categorical(key, x))


def test_categorical_nan_logits_stay_in_vocabulary():
  logp = jnp.full((2, 200), jnp.nan)
  tok = np.asarray(processors.categorical(jax.random.key(0), logp))
  assert ((tok >= 0) & (tok < 200)).all()
