"""The one cached path (`models.init_cache` / `forward_with_cache`) against `models.forward`."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cmdp import models
from cmdp.models import decode
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


def test_attention_windows():
  """One-token steps choose among windows of 128 slots and the whole cache; prefills and
  caches of at most 128 slots use the whole cache."""
  assert decode.attention_windows(1023, 1) == (128, 256, 384, 512, 640, 768, 896, 1023)
  assert decode.attention_windows(256, 1) == (128, 256)
  assert decode.attention_windows(128, 1) == (128,)
  assert decode.attention_windows(1023, 512) == (1023,)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_windowed_steps_equal_forward(dtype, monkeypatch):
  """Decode steps over windows of the cache (the step at slot 4 reads 5 slots, those at
  slots 5 and 6 all 9): the same logits as `forward` on the whole sequence and as steps
  over the whole cache at every real token, and the same cache at every real slot."""
  monkeypatch.setattr(decode, "WINDOWS_ON_CPU", True)
  config = CONFIG.replace(dtype=dtype, attention_bias=True, architecture="Qwen2ForCausalLM")
  params = noisy_params(config)
  rng = np.random.default_rng(1)
  lengths = np.array([7, 5, 2])
  mask = np.arange(7)[None] >= (7 - lengths)[:, None]
  tokens = np.where(mask, rng.integers(1, 64, (3, 7)), 0).astype(np.int32)

  @jax.jit
  def run(params, tokens, mask):
    laid_out = models.decode_params(config, params)
    out = []
    for windows in ((2, 5, 9), (9,)):
      cache = init_cache(config, 3, 9)
      got, cache = forward_with_cache(config, laid_out, tokens[:, :4], cache, mask[:, :4])
      steps = [got]
      for t in (4, 5, 6):
        logits, cache = forward_with_cache(config, laid_out, tokens[:, t:t + 1], cache,
                                           mask[:, t:t + 1], windows=windows)
        steps.append(logits)
      out.append((jnp.concatenate(steps, 1), cache))
    return forward(config, params, tokens, mask), out

  want, ((windowed, w_cache), (whole, cache)) = jax.tree.map(np.asarray,
                                                             run(params, tokens, mask))
  tol = 2e-5 if dtype == "float32" else 3e-2
  np.testing.assert_allclose(windowed[mask], want[mask], atol=tol * np.abs(want).max())
  # (a padding feed attends to nothing: its logits, unused, depend on the window)
  np.testing.assert_allclose(windowed[mask], whole[mask], atol=1e-6 * np.abs(want).max())
  np.testing.assert_array_equal(w_cache.mask, cache.mask)
  np.testing.assert_array_equal(w_cache.pos, cache.pos)
  real = cache.mask  # [B, S]: the slots ever attended to
  slot_axis = 3 if decode.keys_transposed(config.dtype) else 2
  for a, b in zip(w_cache.k, cache.k):
    np.testing.assert_allclose(np.moveaxis(a, slot_axis, 1)[real],
                               np.moveaxis(b, slot_axis, 1)[real], rtol=1e-5, atol=1e-5)
  for a, b in zip(w_cache.v, cache.v):
    np.testing.assert_allclose(np.moveaxis(a, 2, 1)[real], np.moveaxis(b, 2, 1)[real],
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("axes", [dict(data=1, fsdp=8), dict(data=1, fsdp=4, tensor=2)],
                         ids=["fsdp8", "fsdp4_tensor2"])
def test_sharded_windowed_sampler_equals_one_device(axes, monkeypatch):
  """On a cpu:8 mesh the decode weights are gathered whole along the model width (split
  over tensor where they were), and steps over cache windows of 4 slots sample the same
  tokens and log-probs as one device attending over the whole cache."""
  from cmdp import rollout, sharding  # pylint: disable=g-import-not-at-top
  config = CONFIG.replace(attention_bias=True, architecture="Qwen2ForCausalLM")
  params = jax.tree.map(lambda x: x * 10 if x.ndim >= 2 else x,
                        init_params(config, jax.random.key(0)))
  rng = np.random.default_rng(2)
  lengths = rng.integers(1, 7, 8)
  mask = np.arange(6)[None] >= (6 - lengths)[:, None]
  tokens = np.where(mask, rng.integers(1, 64, (8, 6)), 0).astype(np.int32)
  kw = dict(max_new_tokens=6, temperature=1.0)
  want = rollout.make_sampler(config, **kw)(params, tokens, mask, jax.random.key(3))
  monkeypatch.setattr(decode, "WINDOW_SLOTS", 4)
  monkeypatch.setattr(decode, "WINDOWS_ON_CPU", True)
  assert decode.attention_windows(11, 1) == (4, 8, 11)
  mesh = sharding.make_mesh(**axes)
  sharded = sharding.shard_params(params, mesh, config)
  got = rollout.make_sampler(config, mesh=mesh, **kw)(sharded, tokens, mask, jax.random.key(3))
  np.testing.assert_array_equal(got.tokens, want.tokens)
  np.testing.assert_allclose(got.logprobs, want.logprobs, atol=1e-4)

  tensor = mesh.shape["tensor"] > 1
  layout = sharding.on_mesh(
      lambda p: models.decode_params(config, p, fuse=not tensor), mesh)
  laid_out = jax.jit(layout).lower(sharded).compile().output_shardings
  for path, s in jax.tree_util.tree_flatten_with_path((laid_out.layers, laid_out.head))[0]:
    assert "fsdp" not in jax.tree.leaves(tuple(s.spec)), (path, s.spec)
  if tensor:  # q's output columns (4 heads) stay split over tensor
    assert laid_out.layers[0]["self_attn"]["q_proj"]["kernel"].spec == \
        jax.sharding.PartitionSpec(None, "tensor")


def test_cpu_steps_attend_over_the_whole_cache(monkeypatch):
  """XLA CPU compiles a one-token step over a 200-slot cache without the window switch
  (`decode.WINDOWS_ON_CPU`), and with it when asked."""
  cache = init_cache(CONFIG, 2, 200)
  params = models.decode_params(CONFIG, init_params(CONFIG, jax.random.key(0)))

  def compiled():  # a new function each time: traced anew
    step = lambda p, c: forward_with_cache(CONFIG, p, jnp.ones((2, 1), jnp.int32), c)
    return jax.jit(step).lower(params, cache).compile().as_text()
  assert decode.attention_windows(200, 1) == (128, 200)
  assert " conditional(" not in compiled()
  monkeypatch.setattr(decode, "WINDOWS_ON_CPU", True)
  assert " conditional(" in compiled()
