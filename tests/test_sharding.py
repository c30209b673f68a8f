"""Mesh, partition rules, and sharded forward / sampling vs the single-device run (8 CPUs)."""
import logging

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from cmdp import rollout, sharding
from cmdp.models import ModelConfig, forward, init_params

CONFIG = ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2,
                     num_heads=4, num_kv_heads=4, head_dim=8)
# 6 query / 3 kv heads: tensor=4 cannot split heads (6*8 and 3*8 would split mid-head), and
# a vocabulary of 66 does not divide 4 either.
ODD = CONFIG.replace(vocab_size=66, hidden_size=48, num_heads=6, num_kv_heads=3)


def test_make_mesh_sizes_and_errors():
  mesh = sharding.make_mesh(data=-1, fsdp=2, tensor=2)
  assert mesh.axis_names == ("data", "fsdp", "tensor")
  assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
  assert sorted(d.id for d in mesh.devices.flat) == list(range(8))
  assert dict(sharding.make_mesh(tensor=4, devices=jax.devices()[:4]).shape) == {
      "data": 1, "fsdp": 1, "tensor": 4}
  with pytest.raises(ValueError, match="divide"):
    sharding.make_mesh(data=-1, tensor=3)
  with pytest.raises(ValueError, match="8 are given"):
    sharding.make_mesh(data=2, fsdp=1, tensor=2)
  with pytest.raises(ValueError, match="at most one -1"):
    sharding.make_mesh(data=-1, fsdp=-1)


def _flat_specs(config, mesh):
  specs = sharding.param_specs(init_params(config, jax.random.key(0)), mesh, config)
  flat = jax.tree_util.tree_flatten_with_path(specs, is_leaf=lambda x: isinstance(x, P))[0]
  return {"/".join(k.key for k in path): spec for path, spec in flat}


def test_param_specs_follow_the_rules():
  mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
  specs = _flat_specs(CONFIG.replace(attention_bias=True), mesh)
  want = {
      "embed_tokens/embedding": P("tensor", "fsdp"),
      "lm_head/kernel": P("fsdp", "tensor"),
      "norm/scale": P(None),
      "layers/input_layernorm/scale": P(None, None),
      "layers/post_attention_layernorm/scale": P(None, None),
      "layers/self_attn/q_proj/kernel": P(None, "fsdp", "tensor"),
      "layers/self_attn/k_proj/kernel": P(None, "fsdp", "tensor"),
      "layers/self_attn/v_proj/kernel": P(None, "fsdp", "tensor"),
      "layers/self_attn/q_proj/bias": P(None, "tensor"),
      "layers/self_attn/k_proj/bias": P(None, "tensor"),
      "layers/self_attn/v_proj/bias": P(None, "tensor"),
      "layers/self_attn/o_proj/kernel": P(None, "tensor", "fsdp"),
      "layers/mlp/gate_proj/kernel": P(None, "fsdp", "tensor"),
      "layers/mlp/up_proj/kernel": P(None, "fsdp", "tensor"),
      "layers/mlp/down_proj/kernel": P(None, "tensor", "fsdp"),
  }
  assert specs == want


def test_indivisible_dims_fall_back_to_replication(caplog):
  mesh = sharding.make_mesh(data=2, tensor=4)
  with caplog.at_level(logging.INFO, logger="cmdp.sharding"):
    specs = _flat_specs(ODD, mesh)
  assert specs["layers/self_attn/q_proj/kernel"] == P(None, "fsdp", None)  # 6 heads / 4
  assert specs["layers/self_attn/k_proj/kernel"] == P(None, "fsdp", None)  # 3 heads / 4
  assert specs["layers/self_attn/o_proj/kernel"] == P(None, None, "fsdp")
  assert specs["layers/mlp/gate_proj/kernel"] == P(None, "fsdp", "tensor")  # 64 / 4 fine
  assert specs["embed_tokens/embedding"] == P(None, "fsdp")  # vocab 66 / 4
  assert "layers/self_attn/q_proj/kernel: dim 2" in caplog.text
  # Without the config only sizes are checked: 6 * 8 = 48 divides 4.
  params = init_params(ODD, jax.random.key(0))
  assert sharding.param_specs(params, mesh)["layers"]["self_attn"]["q_proj"]["kernel"] == P(
      None, "fsdp", "tensor")


def test_unknown_parameter_is_named():
  mesh = sharding.make_mesh()
  with pytest.raises(ValueError, match="lora/a"):
    sharding.param_specs({"lora": {"a": np.zeros((2, 2))}}, mesh)


def test_cache_and_batch_specs():
  from cmdp.models import cache_specs, init_cache
  mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
  specs = cache_specs(jax.eval_shape(lambda: init_cache(CONFIG, 8, 5)), mesh)
  layers = CONFIG.num_layers  # one [B, KVH, ...] buffer per layer
  assert specs.k == specs.v == (P(("data", "fsdp"), "tensor", None, None),) * layers
  assert specs.mask == P(("data", "fsdp"), None) and specs.pos == P(("data", "fsdp"))
  odd = cache_specs(jax.eval_shape(lambda: init_cache(ODD, 6, 5)), mesh)
  # batch 6 / 4 stays whole; 3 kv heads do not divide tensor=2, so head_dim (8) is split:
  # dim 2 of the float32 keys [B, KVH, hd, S], dim 3 of the values [B, KVH, S, hd]
  assert odd.k == (P(None, None, "tensor", None),) * layers
  assert odd.v == (P(None, None, None, "tensor"),) * layers
  assert sharding.batch_spec() == P(("data", "fsdp"))
  assert sharding.cache_specs is cache_specs  # still named where the layout is


MESHES = [(CONFIG, dict(data=8)), (CONFIG, dict(data=2, tensor=4)),
          (CONFIG, dict(data=2, fsdp=2, tensor=2)), (ODD, dict(data=2, tensor=4))]


@pytest.mark.parametrize("config, axes", MESHES, ids=["data8", "data2_tensor4",
                                                      "data2_fsdp2_tensor2", "odd_heads"])
def test_sharded_forward_and_greedy_match_single_device(config, axes):
  params = jax.tree.map(lambda x: x * 10 if x.ndim >= 2 else x,  # logits of order 1
                        init_params(config, jax.random.key(0)))
  rng = np.random.default_rng(0)
  lengths = np.array([6, 3, 1, 4, 5, 2, 6, 4])
  mask = np.arange(6)[None] >= (6 - lengths)[:, None]
  tokens = np.where(mask, rng.integers(1, config.vocab_size, (8, 6)), 0).astype(np.int32)

  mesh = sharding.make_mesh(**axes)
  sharded = sharding.shard_params(params, mesh, config)
  want_specs = sharding.param_specs(params, mesh, config)
  assert jax.tree.leaves(jax.tree.map(lambda x, s: x.sharding.spec == s, sharded, want_specs,
                                      is_leaf=lambda x: isinstance(x, P)))
  batch = sharding.batch_spec()
  fwd = sharding.jit_sharded(lambda p, t, m: forward(config, p, t, m), mesh,
                             in_specs=(want_specs, batch, batch), out_specs=batch)
  logits = fwd(sharded, tokens, mask)
  assert logits.sharding == NamedSharding(mesh, batch)
  single = jax.jit(forward, static_argnums=0)(config, params, tokens, mask)
  # float32 partial sums added in another order (tensor axis): 1.4e-5 seen on logits of order
  # 1 through the x10 weights; the greedy tokens below must match exactly.
  np.testing.assert_allclose(np.asarray(logits)[mask], np.asarray(single)[mask], atol=5e-5)

  kw = dict(max_new_tokens=5, greedy=True)
  r = rollout.make_sampler(config, mesh=mesh, **kw)(sharded, tokens, mask, jax.random.key(0))
  ref = rollout.sample(config, params, tokens, mask, jax.random.key(0), **kw)
  np.testing.assert_array_equal(r.tokens, ref.tokens)
  np.testing.assert_allclose(r.logprobs, ref.logprobs, atol=1e-4)
  assert r.tokens.sharding.spec == batch


def test_sampler_rejects_batch_not_divisible_by_mesh():
  mesh = sharding.make_mesh(data=8)
  sampler = rollout.make_sampler(CONFIG, mesh=mesh, max_new_tokens=2, greedy=True)
  tokens = np.ones((6, 3), np.int32)
  with pytest.raises(ValueError, match="multiple of data\\*fsdp=8"):
    sampler(init_params(CONFIG, jax.random.key(0)), tokens, tokens > 0, jax.random.key(0))
