"""The one cached path (`models.init_cache` / `forward_with_cache`) against `models.forward`."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cmdp import models
from cmdp.models import ModelConfig, forward, forward_with_cache, init_cache, init_params

CONFIG = ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2,
                     num_heads=4, num_kv_heads=2, head_dim=8)


def noisy_params(config):
  """Random params with logits of order 10, and biases and norm scales away from 0 and 1."""
  params = init_params(config, jax.random.key(1))
  head = "lm_head" if "lm_head" in params else "embed_tokens"
  params = {name: jax.tree.map(lambda x: x * (10.0 if name == head else 4.0)
                               if x.ndim >= 2 else x, sub)
            for name, sub in params.items()}
  leaves, tree = jax.tree.flatten(params)
  noise = [0.3 * jax.random.normal(jax.random.key(i), x.shape) for i, x in enumerate(leaves)]
  return jax.tree.unflatten(tree, [x + e for x, e in zip(leaves, noise)])


@pytest.mark.parametrize("kw", [
    dict(rope_scaling=(("factor", 8.0), ("high_freq_factor", 4.0), ("low_freq_factor", 1.0),
                       ("original_max_position_embeddings", 4), ("rope_type", "llama3")),
         output_vocab=50),  # Llama-3
    dict(attention_bias=True, architecture="Qwen2ForCausalLM"),
    dict(qk_norm=True, tie_word_embeddings=True, architecture="Qwen3ForCausalLM",
         dtype="bfloat16"),
], ids=["llama3_rope_output_vocab", "qwen2_bias", "qwen3_qk_norm_tied_bf16"])
def test_forward_with_cache_matches_forward(kw):
  """Prefill 4 left-padded tokens, then 2 single steps (one row fed as padding), vs one full
  forward: with the raw parameter tree, and with fused and per-weight `decode_params`."""
  config = CONFIG.replace(**kw)
  params = noisy_params(config)
  rng = np.random.default_rng(0)
  lengths = np.array([6, 3, 1, 4])
  mask = np.arange(6)[None] >= (6 - lengths)[:, None]
  tokens = np.where(mask, rng.integers(1, 64, (4, 6)), 0).astype(np.int32)
  mask[1, 5] = False  # a finished row's feed: masked, must not move later positions

  @jax.jit
  def run(params, tokens, mask):
    want = forward(config, params, tokens, mask)
    out = []
    layouts = (params, models.decode_params(config, params, fuse=True),
               models.decode_params(config, params, fuse=False))
    for laid_out in layouts:
      cache = init_cache(config, 4, 7)
      last, _ = forward_with_cache(config, laid_out, tokens[:, :4], cache, mask[:, :4],
                                   last_only=True)
      got, cache = forward_with_cache(config, laid_out, tokens[:, :4], cache, mask[:, :4])
      steps = [got]
      for t in (4, 5):
        logits, cache = forward_with_cache(config, laid_out, tokens[:, t:t + 1], cache,
                                           mask[:, t:t + 1])
        steps.append(logits)
      out.append((jnp.concatenate(steps, 1), last, cache))
    return want, out

  want, out = jax.tree.map(np.asarray, run(params, tokens, mask))
  # float32: reassociation only; bfloat16: both round the same ops to 8 bits of mantissa.
  tol = 2e-5 if config.dtype == "float32" else 3e-2
  for got, last, cache in out:
    np.testing.assert_allclose(got[mask], want[mask], atol=tol * np.abs(want).max())
    np.testing.assert_allclose(last, got[:, 3], atol=tol * np.abs(want).max())
    np.testing.assert_array_equal(cache.pos, mask.sum(1))
    np.testing.assert_array_equal(cache.mask[:, :6], mask)
    assert not cache.mask[:, 6:].any() and int(cache.index) == 6


@pytest.mark.parametrize("dtype, key_shape", [("float32", (3, 2, 8, 5)),
                                              ("bfloat16", (3, 2, 5, 8))])
def test_init_cache_layout(dtype, key_shape):
  """One buffer per layer; keys transposed `[B, KVH, hd, S]` for float32, row-major for
  bfloat16 (see `decode.keys_transposed`); values `[B, KVH, S, hd]`."""
  cache = init_cache(CONFIG.replace(dtype=dtype), 3, 5)
  assert len(cache.k) == len(cache.v) == CONFIG.num_layers
  assert all(k.shape == key_shape and k.dtype == jnp.dtype(dtype) for k in cache.k)
  assert all(v.shape == (3, 2, 5, 8) for v in cache.v)
  assert cache.mask.shape == (3, 5) and not cache.mask.any()
  assert int(cache.index) == 0 and cache.pos.shape == (3,)
