"""Sampler tests on a tiny random decoder: every check is against `forward` or numpy.

The model step the sampler runs (`models.forward_with_cache`) is checked against `forward` in
tests/models/test_decode.py."""
import jax
import numpy as np
import pytest
from scipy import stats

from cmdp import rollout
from cmdp.models import ModelConfig, forward, init_params

V = 64
CONFIG = ModelConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_layers=2,
                     num_heads=4, num_kv_heads=2, head_dim=8)
SAMPLED = dict(temperature=0.7, top_k=12, top_p=0.9)
N = 8  # new tokens in most tests (same shapes share compiled samplers)
fwd = jax.jit(forward, static_argnums=0)
rescore = jax.jit(rollout.rollout_logprobs, static_argnums=0,
                  static_argnames=("temperature", "top_k", "top_p"))


def peaky_params(config, seed=0, scale=25.0, body_scale=4.0):
  """Random params whose next-token distributions are far from uniform: the output head (or the
  tied embedding) is scaled by `scale`, the other matrices by `body_scale`. Scaling every matrix
  by `scale` makes attention scores so large (~1e4) that float32 rounding differences between
  the cached and the uncached path reach 1e-3 in the logits."""
  params = init_params(config, jax.random.key(seed))
  head = "lm_head" if "lm_head" in params else "embed_tokens"
  return {name: jax.tree.map(lambda x: x * (scale if name == head else body_scale)
                             if x.ndim >= 2 else x, sub)
          for name, sub in params.items()}


@pytest.fixture(scope="module")
def params():
  return peaky_params(CONFIG)


@pytest.fixture(scope="module")
def prompts():
  """Ragged LEFT-padded prompts [4, 6] (real lengths 6, 3, 1, 4); pad id 0."""
  rng = np.random.default_rng(0)
  lengths = np.array([6, 3, 1, 4])
  mask = np.arange(6)[None] >= (6 - lengths)[:, None]
  tokens = np.where(mask, rng.integers(1, V, (4, 6)), 0).astype(np.int32)
  return tokens, mask


def np_log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def np_sampling_probs(logits, temperature=1.0, top_k=0, top_p=1.0):
  """Reference sampling distribution of one row: sort-based, written from the definitions."""
  x = np.asarray(logits, np.float64) / temperature
  order = np.argsort(-x, kind="stable")
  keep = np.zeros(x.shape, bool)
  k = top_k if top_k > 0 else x.size
  keep[order[:k]] = True
  if top_p < 1.0:
    p = np.exp(np_log_softmax(np.where(keep, x, -np.inf)))
    mass_before = np.cumsum(p[order]) - p[order]
    nucleus = order[(mass_before < top_p) & keep[order]]
    keep[:] = False
    keep[nucleus] = True
  return np.exp(np_log_softmax(np.where(keep, x, -np.inf)))


def test_token_logprobs_matches_numpy():
  logits = np.random.default_rng(1).normal(size=(3, 5, V)).astype(np.float32) * 4
  targets = np.random.default_rng(2).integers(0, V, (3, 5))
  want = np.take_along_axis(np_log_softmax(logits), targets[..., None], -1)[..., 0]
  np.testing.assert_allclose(rollout.token_logprobs(logits, targets), want, atol=1e-5)


@pytest.mark.parametrize("settings", [SAMPLED, dict(top_p=0.8)])
def test_logprobs_match_forward(params, prompts, settings):
  tokens, mask = prompts
  r = rollout.sample(CONFIG, params, tokens, mask, jax.random.key(3), max_new_tokens=N,
                     **settings)
  recomputed = rescore(CONFIG, params, r.tokens, r.attention_mask, r.response_mask, **settings)
  np.testing.assert_allclose(r.logprobs, recomputed, atol=1e-4)
  assert np.all(np.asarray(r.logprobs)[~np.asarray(r.response_mask)] == 0)
  assert np.all(np.asarray(r.logprobs)[np.asarray(r.response_mask)] <= 0)
  # The log-prob is that of the processed distribution, checked against numpy for row 0.
  logits = np.asarray(fwd(CONFIG, params, r.tokens, r.attention_mask))
  probs = np_sampling_probs(logits[0, 5], **settings)
  np.testing.assert_allclose(r.logprobs[0, 6], np.log(probs[int(r.tokens[0, 6])]), atol=1e-4)


def test_greedy_matches_uncached_argmax_loop(params, prompts):
  tokens, mask = prompts
  r = rollout.sample(CONFIG, params, tokens, mask, jax.random.key(0), max_new_tokens=N,
                     greedy=True)
  # No cache: each step recomputes `forward` over the whole sequence so far. Future slots
  # are masked padding, which causal attention never reads, so one compiled shape serves.
  seq = np.concatenate([tokens, np.zeros((4, N), np.int32)], 1)
  seq_mask = np.concatenate([mask, np.zeros((4, N), bool)], 1)
  want_lp = []
  for t in range(6, 6 + N):
    last = np.asarray(fwd(CONFIG, params, seq, seq_mask))[:, t - 1]
    seq[:, t] = last.argmax(-1)
    seq_mask[:, t] = True
    want_lp.append(np_log_softmax(last)[np.arange(4), seq[:, t]])
  np.testing.assert_array_equal(r.tokens, seq)
  np.testing.assert_array_equal(r.attention_mask, seq_mask)
  np.testing.assert_allclose(np.asarray(r.logprobs)[:, 6:], np.stack(want_lp, 1), atol=1e-4)
  np.testing.assert_array_equal(r.lengths, [N] * 4)
  assert not np.asarray(r.finished).any()


def test_reproducible_and_keys_differ(params, prompts):
  tokens, mask = prompts
  run = lambda seed: rollout.sample(CONFIG, params, tokens, mask, jax.random.key(seed),
                                    max_new_tokens=N, **SAMPLED)
  a, b, c = run(5), run(5), run(6)
  np.testing.assert_array_equal(a.tokens, b.tokens)
  np.testing.assert_array_equal(a.logprobs, b.logprobs)
  assert (np.asarray(a.tokens)[:, 6:] != np.asarray(c.tokens)[:, 6:]).mean() > 0.3


def test_repeat_inside_equals_prompts_repeated_on_the_host(params, prompts):
  """`repeat=3`: each prompt sampled 3 times, copies adjacent; the rollout is the one of a
  sampler given the prompts repeated with numpy (tokens bitwise; each prompt is prefilled
  once for its 3 rows, a smaller matmul, so log-probs agree to float32 rounding)."""
  tokens, mask = prompts
  settings = dict(max_new_tokens=N, eos_ids=(7,), **SAMPLED)
  inside = rollout.make_sampler(CONFIG, repeat=3, **settings)(params, tokens, mask,
                                                              jax.random.key(2))
  host = rollout.make_sampler(CONFIG, **settings)(params, np.repeat(tokens, 3, axis=0),
                                                  np.repeat(mask, 3, axis=0), jax.random.key(2))
  assert inside.tokens.shape == (12, 6 + N)
  for name, got, want in zip(inside._fields, inside, host):
    if name == "logprobs":
      np.testing.assert_allclose(got, want, atol=1e-5)
    else:
      np.testing.assert_array_equal(np.asarray(got), np.asarray(want), err_msg=name)
  assert (np.asarray(inside.tokens)[0::3, 6:] != np.asarray(inside.tokens)[1::3, 6:]).any()


def test_stop_tokens_end_rows_and_pad(params, prompts):
  tokens, mask = prompts
  free = rollout.sample(CONFIG, params, tokens, mask, jax.random.key(7), max_new_tokens=N,
                        **SAMPLED)
  gen = np.asarray(free.tokens)[:, 6:]
  stop = (int(gen[0, 2]), int(gen[1, 4]))  # two stop ids taken from the unconstrained run
  r = rollout.sample(CONFIG, params, tokens, mask, jax.random.key(7), max_new_tokens=N,
                     eos_ids=stop, pad_id=63, **SAMPLED)
  out, resp = np.asarray(r.tokens)[:, 6:], np.asarray(r.response_mask)[:, 6:]
  for row in range(4):
    hits = np.flatnonzero(np.isin(gen[row], stop))
    length = hits[0] + 1 if hits.size else N
    np.testing.assert_array_equal(out[row, :length], gen[row, :length])  # same draws until stop
    assert (out[row, length:] == 63).all()
    assert resp[row, :length].all() and not resp[row, length:].any()
    assert not np.asarray(r.logprobs)[row, 6 + length:].any()
    assert int(r.lengths[row]) == length
    assert bool(r.finished[row]) == bool(hits.size)
  np.testing.assert_array_equal(r.attention_mask, np.concatenate([mask, resp], 1))
  assert int(r.lengths[0]) <= 3 and bool(r.finished[0])


def test_forced_stop_token_ends_every_row_at_once(prompts):
  tokens, mask = prompts
  params = init_params(CONFIG, jax.random.key(0))  # small weights: the residual stream is
  emb = params["embed_tokens"]["embedding"]       # dominated by a constant +10 in dim 0,
  params["embed_tokens"]["embedding"] = emb.at[:, 0].set(10.0)
  head = params["lm_head"]["kernel"]               # which only token 9's logit reads.
  params["lm_head"]["kernel"] = head.at[0, :].set(0.0).at[0, 9].set(10.0)
  logits = np.asarray(fwd(CONFIG, params, tokens, mask))[mask]
  top2 = np.sort(logits, -1)[:, -2:]
  assert (logits.argmax(-1) == 9).all() and (top2[:, 1] - top2[:, 0] > 20).all()  # p(9) ~ 1
  r = rollout.sample(CONFIG, params, tokens, mask, jax.random.key(0), max_new_tokens=N,
                     eos_ids=(9, 4), pad_id=0)
  np.testing.assert_array_equal(np.asarray(r.tokens)[:, 6], [9] * 4)
  np.testing.assert_array_equal(r.lengths, [1] * 4)
  assert np.asarray(r.finished).all()
  assert (np.asarray(r.tokens)[:, 7:] == 0).all()
  assert not np.asarray(r.response_mask)[:, 7:].any()
  np.testing.assert_allclose(np.asarray(r.logprobs)[:, 6], 0.0, atol=1e-5)  # p(9) ~ 1


def test_top_k_1_is_greedy(params, prompts):
  tokens, mask = prompts
  greedy = rollout.sample(CONFIG, params, tokens, mask, jax.random.key(0), max_new_tokens=N,
                          greedy=True)
  top1 = rollout.sample(CONFIG, params, tokens, mask, jax.random.key(1), max_new_tokens=N,
                        temperature=1.3, top_k=1)
  np.testing.assert_array_equal(top1.tokens, greedy.tokens)
  np.testing.assert_allclose(top1.logprobs, 0.0, atol=1e-6)  # a one-token distribution


@pytest.mark.parametrize("settings", [dict(temperature=0.7), dict(temperature=1.3, top_k=5),
                                      dict(top_p=0.75), SAMPLED])
def test_first_token_distribution(params, settings):
  """10k one-step draws (one prompt repeated) against numpy's probabilities."""
  n = 10_000
  prompt = np.array([[0, 5, 17, 42]], np.int32)
  tokens, mask = np.repeat(prompt, n, 0), np.repeat(prompt > 0, n, 0)
  r = rollout.sample(CONFIG, params, tokens, mask, jax.random.key(11), max_new_tokens=1,
                     **settings)
  logits = np.asarray(fwd(CONFIG, params, prompt, prompt > 0))[0, -1]
  probs = np_sampling_probs(logits, **settings)
  support = probs > 0
  assert support.sum() >= 3 and (support.sum() < V) == (len(settings) > 1 or "top_p" in settings)
  counts = np.bincount(np.asarray(r.tokens)[:, -1], minlength=V)
  assert counts[~support].sum() == 0
  # Pearson chi-square; bins expecting fewer than 5 draws are pooled into one.
  expected = n * probs
  big = expected >= 5
  obs = np.append(counts[big], counts[support & ~big].sum())
  exp = np.append(expected[big], expected[support & ~big].sum())
  obs, exp = obs[exp > 0], exp[exp > 0]
  chi2 = ((obs - exp) ** 2 / exp).sum()
  assert chi2 < stats.chi2.ppf(0.999, len(obs) - 1), (chi2, len(obs))
  np.testing.assert_allclose(np.asarray(r.logprobs)[:, -1],
                             np.log(probs[np.asarray(r.tokens)[:, -1]]), atol=1e-4)


def test_compiles_once_per_shape(params, prompts):
  tokens, mask = prompts
  sampler = rollout.make_sampler(CONFIG, max_new_tokens=3, greedy=True)
  for cut in range(3):  # different real lengths, same [B, P]
    m = mask & (np.arange(6)[None] >= cut)
    sampler(params, np.where(m, tokens, 0), m, jax.random.key(cut))
  assert sampler.jitted._cache_size() == 1


@pytest.mark.parametrize("bad, match", [
    (dict(temperature=0.0), "temperature"), (dict(top_p=0.0), "top_p"),
    (dict(top_k=-1), "top_k"), (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(eos_ids=("a",)), "eos_ids"), (dict(eos_ids=5), "eos_ids")])
def test_bad_settings_name_the_field(bad, match):
  kw = dict(max_new_tokens=2)
  kw.update(bad)
  with pytest.raises(ValueError, match=match):
    rollout.make_sampler(CONFIG, **kw)


def test_right_padded_prompts_are_rejected(params):
  tokens = np.array([[3, 4, 0]], np.int32)
  with pytest.raises(ValueError, match="LEFT padded"):
    rollout.sample(CONFIG, params, tokens, tokens > 0, jax.random.key(0), max_new_tokens=2)
  with pytest.raises(ValueError, match="LEFT padded"):
    rollout.sample(CONFIG, params, np.array([[3, 0, 4]]), np.array([[1, 0, 1]]),
                   jax.random.key(0), max_new_tokens=2)
