"""A prompt prefix shared by every row runs once per batch: the forward pass, its gradient,
the sampler and the update step give the numbers of the plain, left-padded layout."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cmdp import models, rollout
from cmdp.objectives import ObjectiveConfig, get_objective
from cmdp.training import step as step_lib

S, T, B = 6, 14, 4  # shared prefix, row width, rows
CFG = models.ModelConfig(vocab_size=61, hidden_size=32, intermediate_size=48, num_layers=3,
                         num_heads=4, num_kv_heads=2, head_dim=8, qk_norm=True,
                         tie_word_embeddings=True)


def _layouts(seed=0, lengths=(T - S, T - S - 3, T - S - 1, 2)):
  """The same sequences laid out two ways: `[prefix, pad..., own]` (the shared layout) and
  left padded `[pad..., prefix, own]`; and `own` lengths per row."""
  rng = np.random.default_rng(seed)
  prefix = rng.integers(1, CFG.vocab_size, S)
  own = [rng.integers(1, CFG.vocab_size, n) for n in lengths]
  shared = np.zeros((B, T), np.int32)
  left = np.zeros((B, T), np.int32)
  shared_mask = np.zeros((B, T), bool)
  left_mask = np.zeros((B, T), bool)
  for i, o in enumerate(own):
    shared[i, :S], shared[i, T - len(o):] = prefix, o
    shared_mask[i, :S] = shared_mask[i, T - len(o):] = True
    seq = np.concatenate([prefix, o])
    left[i, T - len(seq):], left_mask[i, T - len(seq):] = seq, True
  return shared, shared_mask, left, left_mask, [len(o) for o in own]


@pytest.fixture(scope="module")
def params():
  return models.init_params(CFG, jax.random.key(3))


@pytest.mark.parametrize("logits_from", [0, 3, S, T - 4])
def test_forward_equals_the_left_padded_layout(params, logits_from):
  shared, shared_mask, left, left_mask, lengths = _layouts()
  got = np.asarray(models.forward(CFG, params, shared, shared_mask, logits_from,
                                  shared_prefix=S))
  assert got.shape == (B, T - logits_from, CFG.vocab_size)
  ref = np.asarray(models.forward(CFG, params, left, left_mask))  # independent layout
  whole = np.asarray(models.forward(CFG, params, shared, shared_mask))
  for i, n in enumerate(lengths):
    # Real positions in order: the prefix, then the row's own tokens.
    cols_shared = np.r_[np.arange(S), np.arange(T - n, T)]
    cols_left = np.arange(T - S - n, T)
    keep = cols_shared >= logits_from
    np.testing.assert_allclose(got[i, cols_shared[keep] - logits_from],
                               ref[i, cols_left[keep]], atol=2e-5, rtol=1e-5)
    np.testing.assert_allclose(got[i, cols_shared[keep] - logits_from],
                               whole[i, cols_shared[keep]], atol=2e-5, rtol=1e-5)


def test_gradient_equals_the_left_padded_layout(params):
  shared, shared_mask, left, left_mask, _ = _layouts(1)
  weights = np.random.default_rng(2).normal(size=(B, T, CFG.vocab_size)).astype(np.float32)

  def loss(p, tokens, mask, w, prefix):
    logits = models.forward(CFG, p, tokens, mask, shared_prefix=prefix)
    return jnp.sum(jnp.where(mask[..., None], logits * w, 0.0))

  # Only the real positions' weights matter; move them to the left layout's columns.
  left_weights = np.zeros_like(weights)
  for i in range(B):
    left_weights[i, left_mask[i]] = weights[i, shared_mask[i]]
  got = jax.grad(loss)(params, shared, shared_mask, weights, S)
  ref = jax.grad(loss)(params, left, left_mask, left_weights, 0)
  for g, r in zip(jax.tree.leaves(got), jax.tree.leaves(ref)):
    np.testing.assert_allclose(g, r, atol=1e-4 * float(jnp.abs(r).max()) + 1e-6)


def test_forward_refuses_a_prefix_without_own_columns(params):
  shared, shared_mask, *_ = _layouts()
  with pytest.raises(ValueError, match="shared_prefix"):
    models.forward(CFG, params, shared, shared_mask, shared_prefix=T)


@pytest.mark.parametrize("greedy", [True, False])
def test_sampler_equals_the_left_padded_layout(params, greedy):
  shared, shared_mask, left, left_mask, _ = _layouts(4)
  kw = dict(max_new_tokens=5, greedy=greedy, eos_ids=(7,), temperature=0.8)
  a = rollout.make_sampler(CFG, **kw)(params, left, left_mask, jax.random.key(5))
  b = rollout.make_sampler(CFG, shared_prefix=S, **kw)(params, shared, shared_mask,
                                                       jax.random.key(5))
  np.testing.assert_array_equal(np.asarray(b.tokens)[:, T:], np.asarray(a.tokens)[:, T:])
  np.testing.assert_allclose(b.logprobs, a.logprobs, atol=1e-5)
  np.testing.assert_array_equal(b.tokens[:, :T], shared)
  # The rollout's log-probs recomputed by one forward pass of the shared layout.
  again = rollout.rollout_logprobs(CFG, params, b.tokens, b.attention_mask, b.response_mask,
                                   temperature=0.8, shared_prefix=S)
  if not greedy:
    np.testing.assert_allclose(again, b.logprobs, atol=1e-5)


def test_sampler_refuses_rows_that_do_not_share_the_prefix(params):
  shared, shared_mask, *_ = _layouts()
  sampler = rollout.make_sampler(CFG, max_new_tokens=2, shared_prefix=S)
  bad = shared.copy()
  bad[2, 1] = bad[0, 1] % (CFG.vocab_size - 1) + 1
  with pytest.raises(ValueError, match="same real tokens in every row"):
    sampler(params, bad, shared_mask, jax.random.key(0))
  with pytest.raises(ValueError, match="LEFT padded"):
    rollout.make_sampler(CFG, max_new_tokens=2)(params, shared, shared_mask, jax.random.key(0))


def test_train_step_equals_the_left_padded_layout(params):
  """One cmdp update with the teacher inside: metrics and new parameters agree."""
  # Every row's own tokens end with its 4-token response, in the same columns either way.
  shared, shared_mask, left, left_mask, _ = _layouts(6, lengths=(8, 6, 7, 5))
  teacher = models.init_params(CFG, jax.random.key(9))
  hp = ObjectiveConfig(group_size=2, budget=3.0)
  objective = get_objective("cmdp")
  optimizer = optax.sgd(0.5)
  start = T - 5  # responses: the last 4 columns of each row
  resp = np.zeros((B, T), bool)
  resp[:, start + 1:] = True
  reward = np.asarray([1.0, 0.0, 0.0, 1.0], np.float32)

  def run(tokens, mask, prefix):
    fn = jax.jit(step_lib.make_train_step(
        objective, hp, CFG, optimizer,
        step_lib.StepConfig(response_start=start, shared_prefix=prefix), teacher_config=CFG))
    state = step_lib.init_state(params, optimizer, objective, hp, jax.random.key(0))
    batch = dict(inputs=tokens[:, :-1], targets=tokens[:, 1:], input_mask=mask[:, :-1],
                 mask=resp[:, 1:].astype(np.float32),
                 old_logprobs=np.zeros((B, T - 1), np.float32), task_reward=reward)
    return fn(state, teacher, batch)

  new_a, metrics_a = run(shared, shared_mask, S)
  new_b, metrics_b = run(left, left_mask, 0)
  for k in ("loss", "grad_norm", "sequence_kl", "sequence_cost"):
    if k in metrics_b:
      np.testing.assert_allclose(metrics_a[k], metrics_b[k], rtol=1e-4, err_msg=k)
  for g, r in zip(jax.tree.leaves(new_a.params), jax.tree.leaves(new_b.params)):
    np.testing.assert_allclose(g, r, atol=1e-5)
  assert float(metrics_b["grad_norm"]) > 0
