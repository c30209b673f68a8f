"""A causal decoder (Llama / Qwen2 / Qwen3 / SmolLM2) in Flax linen, with a KV cache.

Layers are stacked with `nn.scan`: every per-layer parameter has a leading `[L]` axis, which
keeps compile time flat in depth and makes the partition rules one line per weight.

Parameter tree (names mirror Hugging Face so loading is a rename and a transpose):

    embed_tokens/embedding                 [V, D]
    layers/input_layernorm/scale           [L, D]
    layers/self_attn/{q,k,v}_proj/kernel   [L, D, heads * head_dim]   (+ bias if attention_bias)
    layers/self_attn/{q,k}_norm/scale      [L, head_dim]               (qk_norm only)
    layers/self_attn/o_proj/kernel         [L, num_heads * head_dim, D]
    layers/post_attention_layernorm/scale  [L, D]
    layers/mlp/{gate,up}_proj/kernel       [L, D, F]
    layers/mlp/down_proj/kernel            [L, F, D]
    norm/scale                             [D]
    lm_head/kernel                         [D, V]                      (untied only)
"""
from __future__ import annotations

import functools
import math
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cmdp.models.config import ModelConfig

_MASK_VALUE = -1e30  # finite, so fully masked rows (left padding) give zeros, never NaN


class KVCache(NamedTuple):
  """Decoding state. Slots are shared by the batch; positions are per row (left padding).

  k, v:   [L, B, S, num_kv_heads, head_dim]  keys/values written so far.
  mask:   [B, S] bool, True where a slot holds a real (non-pad) token.
  index:  [] int32, next slot to write.
  pos:    [B] int32, RoPE position of the next real token of each row.
  """
  k: jax.Array
  v: jax.Array
  mask: jax.Array
  index: jax.Array
  pos: jax.Array


def compute_dtype(config: ModelConfig):
  return jnp.bfloat16 if config.dtype == "bfloat16" else jnp.float32


def init_cache(config: ModelConfig, batch_size: int, max_len: int) -> KVCache:
  """An empty cache of `max_len` slots."""
  shape = (config.num_layers, batch_size, max_len, config.num_kv_heads, config.head_dim)
  dtype = compute_dtype(config)
  return KVCache(
      k=jnp.zeros(shape, dtype), v=jnp.zeros(shape, dtype),
      mask=jnp.zeros((batch_size, max_len), bool),
      index=jnp.zeros((), jnp.int32), pos=jnp.zeros((batch_size,), jnp.int32))


def rope_inv_freq(config: ModelConfig) -> jax.Array:
  """Inverse frequencies `[head_dim // 2]`, with Llama-3 scaling when configured."""
  hd = config.head_dim
  inv_freq = 1.0 / (config.rope_theta ** (jnp.arange(0, hd, 2, dtype=jnp.float32) / hd))
  scaling = config.rope_scaling_dict
  if scaling is None:
    return inv_freq
  factor = scaling["factor"]
  low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
  old_len = scaling["original_max_position_embeddings"]
  wavelen = 2 * math.pi / inv_freq
  scaled = jnp.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
  smooth = (old_len / wavelen - low) / (high - low)
  smoothed = (1 - smooth) * scaled / factor + smooth * scaled
  medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
  return jnp.where(medium, smoothed, scaled)


def rope_tables(positions: jax.Array, inv_freq: jax.Array) -> tuple[jax.Array, jax.Array]:
  """`(cos, sin)`, each float32 `[B, T, 1, hd]`, for `positions [B, T]`: computed once and
  shared by every layer (and every head)."""
  angles = positions[..., None].astype(jnp.float32) * inv_freq  # [B, T, hd/2]
  angles = jnp.concatenate([angles, angles], -1)[:, :, None, :]
  return jnp.cos(angles), jnp.sin(angles)


def rotate(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
  """Rotary embedding of `x [B, T, H, hd]` with `rope_tables`, Hugging Face's half-split layout."""
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  rotated = jnp.concatenate([-x2, x1], -1)
  return (x.astype(jnp.float32) * cos + rotated * sin).astype(x.dtype)


def apply_rope(x: jax.Array, positions: jax.Array, inv_freq: jax.Array) -> jax.Array:
  """Rotary embedding. x: [B, T, H, hd], positions: [B, T]."""
  return rotate(x, *rope_tables(positions, inv_freq))


class RMSNorm(nn.Module):
  eps: float
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    scale = self.param("scale", nn.initializers.ones, (x.shape[-1],), jnp.float32)
    xf = x.astype(jnp.float32)
    xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
    return (scale * xf.astype(self.dtype).astype(jnp.float32)).astype(self.dtype)


def _dense(features, name, dtype, bias=False):
  return nn.Dense(features, use_bias=bias, dtype=dtype, param_dtype=jnp.float32, name=name,
                  kernel_init=nn.initializers.normal(0.02))


class Attention(nn.Module):
  config: ModelConfig

  @nn.compact
  def __call__(self, x, positions, key_mask, layer_cache, index):
    c = self.config
    dtype = compute_dtype(c)
    b, t, _ = x.shape
    q = _dense(c.num_heads * c.head_dim, "q_proj", dtype, c.attention_bias)(x)
    k = _dense(c.num_kv_heads * c.head_dim, "k_proj", dtype, c.attention_bias)(x)
    v = _dense(c.num_kv_heads * c.head_dim, "v_proj", dtype, c.attention_bias)(x)
    q = q.reshape(b, t, c.num_heads, c.head_dim)
    k = k.reshape(b, t, c.num_kv_heads, c.head_dim)
    v = v.reshape(b, t, c.num_kv_heads, c.head_dim)
    if c.qk_norm:
      q = RMSNorm(c.rms_norm_eps, dtype, name="q_norm")(q)
      k = RMSNorm(c.rms_norm_eps, dtype, name="k_norm")(k)
    inv_freq = rope_inv_freq(c)
    q = apply_rope(q, positions, inv_freq)
    k = apply_rope(k, positions, inv_freq)

    if layer_cache is None:  # keys are this call's tokens, slots 0..t-1
      keys, values, q_slots = k, v, jnp.arange(t)
      new_cache = None
    else:
      ck, cv = layer_cache
      keys = jax.lax.dynamic_update_slice_in_dim(ck, k.astype(ck.dtype), index, axis=1)
      values = jax.lax.dynamic_update_slice_in_dim(cv, v.astype(cv.dtype), index, axis=1)
      q_slots = index + jnp.arange(t)
      new_cache = (keys, values)

    s = keys.shape[1]
    allowed = (jnp.arange(s)[None, :] <= q_slots[:, None])[None] & key_mask[:, None, :]  # [B,T,S]
    groups = c.num_heads // c.num_kv_heads
    qg = q.reshape(b, t, c.num_kv_heads, groups, c.head_dim)
    scores = jnp.einsum("btkgd,bskd->bkgts", qg, keys.astype(dtype),
                        preferred_element_type=jnp.float32) / math.sqrt(c.head_dim)
    scores = jnp.where(allowed[:, None, None], scores, _MASK_VALUE)
    probs = jax.nn.softmax(scores, axis=-1).astype(dtype)
    out = jnp.einsum("bkgts,bskd->btkgd", probs, values.astype(dtype))
    out = out.reshape(b, t, c.num_heads * c.head_dim)
    return _dense(c.hidden_size, "o_proj", dtype)(out), new_cache


class MLP(nn.Module):
  config: ModelConfig

  @nn.compact
  def __call__(self, x):
    c = self.config
    dtype = compute_dtype(c)
    gate = _dense(c.intermediate_size, "gate_proj", dtype)(x)
    up = _dense(c.intermediate_size, "up_proj", dtype)(x)
    return _dense(c.hidden_size, "down_proj", dtype)(nn.silu(gate) * up)


class Block(nn.Module):
  config: ModelConfig

  @nn.compact
  def __call__(self, x, layer_cache, positions, key_mask, index):
    c = self.config
    dtype = compute_dtype(c)
    h, new_cache = Attention(c, name="self_attn")(
        RMSNorm(c.rms_norm_eps, dtype, name="input_layernorm")(x),
        positions, key_mask, layer_cache, index)
    x = x + h
    x = x + MLP(c, name="mlp")(RMSNorm(c.rms_norm_eps, dtype, name="post_attention_layernorm")(x))
    return x, new_cache


class Decoder(nn.Module):
  """tokens [B, T] -> logits [B, T, V] (float32)."""
  config: ModelConfig

  @nn.compact
  def __call__(self, tokens, positions, key_mask, cache_kv=None, index=0):
    c = self.config
    dtype = compute_dtype(c)
    embed = nn.Embed(c.vocab_size, c.hidden_size, dtype=dtype, param_dtype=jnp.float32,
                     embedding_init=nn.initializers.normal(0.02), name="embed_tokens")
    x = embed(tokens)
    block = Block
    if c.remat:
      block = nn.remat(Block, prevent_cse=False)
    layers = nn.scan(
        block, variable_axes={"params": 0}, split_rngs={"params": True},
        in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast),
        length=c.num_layers)(c, name="layers")
    x, new_kv = layers(x, cache_kv, positions, key_mask, index)
    x = RMSNorm(c.rms_norm_eps, dtype, name="norm")(x)
    if c.tie_word_embeddings:
      logits = embed.attend(x)
    else:
      logits = _dense(c.vocab_size, "lm_head", dtype)(x)
    if c.output_vocab:
      logits = logits[..., :c.output_vocab]
    return logits.astype(jnp.float32), new_kv


@functools.lru_cache(maxsize=16)
def _init_fn(config: ModelConfig):
  tokens = np.zeros((1, 1), np.int32)  # numpy: never a tracer kept in the cache
  init = lambda r: Decoder(config).init(r, tokens, tokens, np.ones((1, 1), bool))["params"]
  return jax.jit(init)  # one compiled program, not one per initialiser op


def init_params(config: ModelConfig, rng: jax.Array) -> dict:
  """Random parameters (normal(0.02) weights, unit norms), float32."""
  return _init_fn(config)(rng)


def _positions(attention_mask: jax.Array, start: jax.Array | int = 0) -> jax.Array:
  return start + jnp.maximum(jnp.cumsum(attention_mask.astype(jnp.int32), axis=-1) - 1, 0)


def forward(config: ModelConfig, params: dict, tokens: jax.Array,
            attention_mask: jax.Array | None = None) -> jax.Array:
  """Causal logits of a batch of (optionally left/right padded) sequences.

  Args:
    config: the model's config.
    params: the parameter tree (see the module docstring).
    tokens: int32 `[B, T]`.
    attention_mask: optional `[B, T]`, 1 for real tokens, 0 for padding. Without it,
      positions are `0..T-1`. With it, each row's positions count only its real tokens and
      padding is never attended to (logits at padded slots are meaningless).

  Returns:
    float32 logits `[B, T, V]`; pure and jittable.
  """
  if attention_mask is None:
    attention_mask = jnp.ones(tokens.shape, bool)
  attention_mask = attention_mask.astype(bool)
  logits, _ = Decoder(config).apply(
      {"params": params}, tokens, _positions(attention_mask), attention_mask)
  return logits


def forward_with_cache(config: ModelConfig, params: dict, tokens: jax.Array, cache: KVCache,
                       attention_mask: jax.Array | None = None) -> tuple[jax.Array, KVCache]:
  """Runs `tokens [B, T]` after what `cache` holds; returns logits `[B, T, V]` and the new cache.

  Used for prefill (T = prompt length, left padded, `attention_mask` marking real tokens) and
  for decoding (T = 1). The caller keeps `cache.index + T <= max_len`.
  """
  if attention_mask is None:
    attention_mask = jnp.ones(tokens.shape, bool)
  attention_mask = attention_mask.astype(bool)
  t = tokens.shape[1]
  key_mask = jax.lax.dynamic_update_slice_in_dim(cache.mask, attention_mask, cache.index, axis=1)
  positions = _positions(attention_mask, cache.pos[:, None])
  logits, (k, v) = Decoder(config).apply(
      {"params": params}, tokens, positions, key_mask, (cache.k, cache.v), cache.index)
  new_cache = KVCache(k=k, v=v, mask=key_mask, index=cache.index + t,
                      pos=cache.pos + attention_mask.sum(-1).astype(jnp.int32))
  return logits, new_cache
