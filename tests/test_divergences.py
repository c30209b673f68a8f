"""cmdp.divergences against float64 numpy references and hand-computed values."""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cmdp import divergences as dv


def np_log_softmax(x):
  x = np.asarray(x, np.float64)
  m = np.max(x, axis=-1, keepdims=True)
  return x - m - np.log(np.sum(np.exp(x - m), axis=-1, keepdims=True))


def np_kl(p_logits, q_logits):
  logp, logq = np_log_softmax(p_logits), np_log_softmax(q_logits)
  return np.sum(np.exp(logp) * (logp - logq), axis=-1)


def np_kl_probs(p, q):
  """kl(p||q) from probabilities, 0 log 0 = 0."""
  safe = np.where(p > 0, p, 1.0)
  return np.sum(np.where(p > 0, p * np.log(safe / q), 0.0), axis=-1)


def np_gjsd(p_logits, q_logits, beta):
  p, q = np.exp(np_log_softmax(p_logits)), np.exp(np_log_softmax(q_logits))
  m = beta * p + (1 - beta) * q
  return beta * np_kl_probs(p, m) + (1 - beta) * np_kl_probs(q, m)


def random_logits(seed, shape, scale=2.0):
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32) * scale


P = random_logits(0, (2, 5, 11))
Q = random_logits(1, (2, 5, 11))


def test_kl_matches_numpy_and_direction():
  np.testing.assert_allclose(dv.kl(P, Q), np_kl(P, Q), rtol=1e-5, atol=1e-6)
  # Asymmetric: kl(p||q) != kl(q||p).
  assert np.max(np.abs(np_kl(P, Q) - np_kl(Q, P))) > 0.05
  np.testing.assert_allclose(dv.kl(Q, P), np_kl(Q, P), rtol=1e-5, atol=1e-6)


def test_kl_direction_hand_computed():
  p = jnp.log(jnp.array([0.9, 0.1]))
  q = jnp.zeros(2)  # (0.5, 0.5)
  # kl(p||q) = 0.9 log(0.9/0.5) + 0.1 log(0.1/0.5) = 0.52900803 - 0.16094379
  np.testing.assert_allclose(dv.kl(p, q), 0.3680642071684971, rtol=1e-6)
  # kl(q||p) = 0.5 log(0.5/0.9) + 0.5 log(0.5/0.1) = -0.29389333 + 0.80471896
  np.testing.assert_allclose(dv.kl(q, p), 0.5108256237659907, rtol=1e-6)


def test_other_divergences_match_numpy():
  p, q = np.exp(np_log_softmax(P)), np.exp(np_log_softmax(Q))
  np.testing.assert_allclose(dv.total_variation(P, Q), 0.5 * np.abs(p - q).sum(-1), rtol=1e-5)
  np.testing.assert_allclose(dv.entropy(P), -np.sum(p * np.log(p), -1), rtol=1e-5)
  for beta in (0.1, 0.5, 0.9):
    np.testing.assert_allclose(dv.generalized_jsd(P, Q, beta), np_gjsd(P, Q, beta),
                               rtol=1e-5, atol=1e-7)
  for alpha in (0.0, 0.3, 1.0):
    np.testing.assert_allclose(dv.skew_kl(P, Q, alpha),
                               np_kl_probs(p, alpha * p + (1 - alpha) * q), rtol=1e-5, atol=1e-7)
  targets = np.random.default_rng(2).integers(0, 11, size=(2, 5))
  expected = np.take_along_axis(np_log_softmax(P), targets[..., None], -1)[..., 0]
  np.testing.assert_allclose(dv.token_logprobs(P, targets), expected, rtol=1e-6)


def test_gkd_ends_are_forward_and_reverse_kl_and_continuous():
  teacher, student = P, Q
  np.testing.assert_array_equal(dv.gkd_divergence(teacher, student, 0.0), dv.kl(teacher, student))
  np.testing.assert_array_equal(dv.gkd_divergence(teacher, student, 1.0), dv.kl(student, teacher))
  for beta in (1e-4, 0.3, 1 - 1e-4):
    reference = np_gjsd(teacher, student, beta) / (beta * (1 - beta))
    np.testing.assert_allclose(dv.gkd_divergence(teacher, student, beta), reference, rtol=1e-4)
  # Continuity: the gap to the end point is O(beta), so it shrinks ~10x per decade of beta
  # (milder logits, so that the O(beta) regime starts before beta = 1e-3).
  teacher, student = P / 2, Q / 2
  forward, reverse = np_kl(teacher, student), np_kl(student, teacher)
  gaps = [np.max(np.abs(dv.gkd_divergence(teacher, student, b) - forward)) for b in (1e-3, 1e-4)]
  assert gaps[1] < 0.2 * gaps[0] and gaps[1] < 1e-3 * np.max(forward)
  gaps = [np.max(np.abs(dv.gkd_divergence(teacher, student, 1 - b) - reverse))
          for b in (1e-3, 1e-4)]
  assert gaps[1] < 0.2 * gaps[0] and gaps[1] < 1e-3 * np.max(reverse)


def test_bounds_tv_jsd_skew():
  for beta in (0.2, 0.5):
    h = -beta * math.log(beta) - (1 - beta) * math.log(1 - beta)
    jsd = np.asarray(dv.generalized_jsd(P, Q, beta))
    assert np.all(jsd >= 0) and np.all(jsd <= h)
  tv = np.asarray(dv.total_variation(P, Q))
  assert np.all(tv >= 0) and np.all(tv <= 1)
  assert np.all(np.asarray(dv.skew_kl(P, Q, 0.25)) <= -math.log(0.25))
  # Disjoint supports reach the bounds exactly.
  p = jnp.array([0.0, 0.0, -jnp.inf, -jnp.inf])
  q = jnp.array([-jnp.inf, -jnp.inf, 0.0, 0.0])
  np.testing.assert_allclose(dv.generalized_jsd(p, q, 0.2),
                             -0.2 * math.log(0.2) - 0.8 * math.log(0.8), rtol=1e-6)
  np.testing.assert_allclose(dv.total_variation(p, q), 1.0, rtol=1e-6)
  np.testing.assert_allclose(dv.skew_kl(p, q, 0.25), -math.log(0.25), rtol=1e-6)


def test_bfloat16_inputs_compute_in_float32():
  p, q = jnp.asarray(P, jnp.bfloat16), jnp.asarray(Q, jnp.bfloat16)
  out = dv.kl(p, q)
  assert out.dtype == jnp.float32
  p64, q64 = np.asarray(p.astype(jnp.float32)), np.asarray(q.astype(jnp.float32))
  np.testing.assert_allclose(out, np_kl(p64, q64), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(dv.gkd_divergence(q, p, 0.5), np_gjsd(q64, p64, 0.5) / 0.25,
                             rtol=1e-5)
  assert dv.token_logprobs(p, jnp.zeros((2, 5), jnp.int32)).dtype == jnp.float32


@pytest.mark.parametrize("mask_value", [-np.inf, -1e9])
def test_masked_and_huge_logits(mask_value):
  p, q = P.copy(), Q.copy()
  p[..., :4] = mask_value
  q[..., :4] = mask_value  # same entries masked in both: equals kl over the rest
  np.testing.assert_allclose(dv.kl(p, q), np_kl(P[..., 4:], Q[..., 4:]), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(dv.gkd_divergence(p, q, 0.3),
                             np_gjsd(P[..., 4:], Q[..., 4:], 0.3) / 0.21, rtol=1e-5)
  np.testing.assert_allclose(dv.entropy(p), dv.entropy(P[..., 4:]), rtol=1e-5)
  total = lambda a, b: jnp.sum(dv.kl(a, b) + dv.gkd_divergence(a, b, 0.3)
                               + dv.skew_kl(a, b, 0.5) + dv.entropy(a))
  grads = jax.jit(jax.grad(total, argnums=(0, 1)))(p, q)
  assert all(np.all(np.isfinite(g)) for g in grads)
  # Huge logits (near one-hot distributions) stay exact.
  np.testing.assert_allclose(dv.kl(P * 1e4, Q * 1e4), np_kl(P * 1e4, Q * 1e4), rtol=1e-5)
  # q gives zero probability where p does not: infinite kl(p||q), not NaN.
  q[..., 5] = -np.inf
  assert np.all(np.isinf(dv.kl(P, q)))


def test_chunked_equals_unchunked_values_and_grads():
  targets = jnp.asarray(np.random.default_rng(3).integers(0, 11, size=(2, 5)))
  fns = {
      "kl": lambda a, b, c: dv.kl(a, b, chunk_size=c),
      "gkd": lambda a, b, c: dv.gkd_divergence(a, b, 0.4, chunk_size=c),
      "logprobs": lambda a, b, c: dv.token_logprobs(a, targets, chunk_size=c),
  }
  weights = jnp.asarray(random_logits(4, (2, 5)))

  @functools.partial(jax.jit, static_argnums=2)
  def values_and_grads(a, b, chunk_size):
    """{name: ((d/da, d/db) of sum(weights * fn), fn)}, one compile per chunk size."""
    return {name: jax.grad(lambda a, b: (jnp.sum(weights * fn(a, b, chunk_size)),
                                         fn(a, b, chunk_size)),
                           argnums=(0, 1), has_aux=True)(a, b)
            for name, fn in fns.items()}

  full = values_and_grads(P, Q, None)
  chunked = values_and_grads(P, Q, 2)  # 5 positions in chunks of 2: has a remainder chunk
  for name in fns:
    (grads_full, values_full), (grads_chunked, values_chunked) = full[name], chunked[name]
    np.testing.assert_allclose(values_chunked, values_full, rtol=1e-6, atol=1e-7, err_msg=name)
    for a, b in zip(grads_chunked, grads_full):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7, err_msg=name)
  # Chunks that divide the length exactly (no remainder), and 2-D input [N, V] (axis 0).
  np.testing.assert_allclose(dv.kl(P, Q, chunk_size=1), np_kl(P, Q), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(dv.kl(P[0], Q[0], chunk_size=3), np_kl(P[0], Q[0]), rtol=1e-5)


def test_one_sample_estimators():
  logp, logq = np_log_softmax(random_logits(5, (5,), 1.0)), np_log_softmax(random_logits(6, (5,)))
  rng = np.random.default_rng(7)
  y = rng.choice(5, size=200_000, p=np.exp(logp))
  lr = np.asarray(dv.logratio(jnp.asarray(logp[y]), jnp.asarray(logq[y])), np.float64)
  k = np.asarray(dv.k3(jnp.asarray(logp[y]), jnp.asarray(logq[y])), np.float64)
  np.testing.assert_allclose(lr, logp[y] - logq[y], rtol=1e-5)
  np.testing.assert_allclose(k, np.exp(logq[y] - logp[y]) - 1 - (logq[y] - logp[y]), rtol=1e-5,
                             atol=1e-7)
  assert np.all(k >= 0) and np.any(lr < 0)
  exact = np.sum(np.exp(logp) * (logp - logq))
  for samples in (lr, k):  # unbiased: mean within 5 standard errors of the exact kl(p||q)
    assert abs(samples.mean() - exact) < 5 * samples.std() / math.sqrt(samples.size)


def test_bad_arguments():
  with pytest.raises(ValueError, match="beta"):
    dv.gkd_divergence(P, Q, 1.5)
  with pytest.raises(ValueError, match="alpha"):
    dv.skew_kl(P, Q, -0.1)
  with pytest.raises(ValueError, match="chunk_size"):
    dv.kl(P, Q, chunk_size=-2)
  with pytest.raises(ValueError, match="chunk_size"):
    dv.kl(P, Q, chunk_size=1.5)
  # 0 means unchunked, as None does (ObjectiveConfig.chunk_size's default).
  np.testing.assert_array_equal(dv.kl(P, Q, chunk_size=0), dv.kl(P, Q))
