"""A causal decoder (Llama / Qwen2 / Qwen3 / SmolLM2) in Flax linen: the training forward.

Layers are stacked with `nn.scan`: every per-layer parameter has a leading `[L]` axis, which
keeps compile time flat in depth and makes the partition rules one line per weight. Cached
decoding (prefill and one-token steps, what the sampler runs) is `cmdp.models.decode`: same
parameters, same math, laid out for speed; this module's RMSNorm and RoPE serve both.

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

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cmdp import mesh_axes
from cmdp.models.config import ModelConfig

_MASK_VALUE = -1e30  # finite, so fully masked rows (left padding) give zeros, never NaN

# Logical names of the activations' dims (`cmdp.mesh_axes.LOGICAL_AXIS_RULES`): each block
# boundary and each projection's output is pinned to them, so on a mesh every device keeps
# its own rows (batch over data and fsdp) and its own heads / MLP columns (tensor).
EMBED = ("activation_batch", "activation_length", "activation_embed")
HEADS = ("activation_batch", "activation_length", "activation_heads", "activation_head_dim")
KV_HEADS = ("activation_batch", "activation_length", "activation_kv_heads",
            "activation_head_dim")
MLP_WIDTH = ("activation_batch", "activation_length", "activation_mlp")
VOCAB = ("activation_batch", "activation_length", "activation_vocab")


def compute_dtype(config: ModelConfig):
  """The activations' dtype: bfloat16 when `config.dtype` says so, else float32."""
  return jnp.bfloat16 if config.dtype == "bfloat16" else jnp.float32


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
  """Causal grouped-query self-attention of `x [B, T, D]` over its own T tokens, after the
  keys and values of shared prefixes when given.

  `prefix` is a tuple of levels, each `(k, v)` of `[n, P, KVH, hd]` with `n` dividing B,
  and `prefix_mask` their `[n, P]` real-token masks: row `r` sees row `r // (B / n)` of a
  level (n = 1: one prefix for every row; n = B / G: one per group of G adjacent rows).
  A level is read in place, never copied per row. Returns the output and this call's own
  `(k, v)`, each `[B, T, KVH, hd]` (keys rotated), what a later call takes as a level.
  """
  config: ModelConfig

  @nn.compact
  def __call__(self, x, positions, key_mask, prefix=(), prefix_mask=()):
    c = self.config
    dtype = compute_dtype(c)
    b, t, _ = x.shape
    q = _dense(c.num_heads * c.head_dim, "q_proj", dtype, c.attention_bias)(x)
    k = _dense(c.num_kv_heads * c.head_dim, "k_proj", dtype, c.attention_bias)(x)
    v = _dense(c.num_kv_heads * c.head_dim, "v_proj", dtype, c.attention_bias)(x)
    q = mesh_axes.constrain(q.reshape(b, t, c.num_heads, c.head_dim), *HEADS)
    k = mesh_axes.constrain(k.reshape(b, t, c.num_kv_heads, c.head_dim), *KV_HEADS)
    v = mesh_axes.constrain(v.reshape(b, t, c.num_kv_heads, c.head_dim), *KV_HEADS)
    if c.qk_norm:
      q = RMSNorm(c.rms_norm_eps, dtype, name="q_norm")(q)
      k = RMSNorm(c.rms_norm_eps, dtype, name="k_norm")(k)
    inv_freq = rope_inv_freq(c)
    q = apply_rope(q, positions, inv_freq)
    k = apply_rope(k, positions, inv_freq)

    groups = c.num_heads // c.num_kv_heads
    qg = q.reshape(b, t, c.num_kv_heads, groups, c.head_dim)
    root = math.sqrt(c.head_dim)
    # Scores against each prefix level, then the tokens' own keys, under one softmax.
    scores, values = [], []
    for (pk, pv), pmask in zip(prefix, prefix_mask):
      n = pk.shape[0]
      qn = qg.reshape(n, b // n, *qg.shape[1:])
      s = jnp.einsum("nrtkgd,nskd->nrkgts", qn, pk.astype(k.dtype),
                     preferred_element_type=jnp.float32) / root
      s = jnp.where(pmask[:, None, None, None, None, :], s, _MASK_VALUE)
      scores.append(s.reshape(b, *s.shape[2:]))
      values.append(pv.astype(v.dtype))
    allowed = jnp.tril(jnp.ones((t, t), bool))[None] & key_mask[:, None, :]  # [B, T, T]
    own = jnp.einsum("btkgd,bskd->bkgts", qg, k, preferred_element_type=jnp.float32) / root
    scores.append(jnp.where(allowed[:, None, None], own, _MASK_VALUE))
    probs = jax.nn.softmax(jnp.concatenate(scores, -1) if prefix else scores[0],
                           axis=-1).astype(dtype)
    widths = [a.shape[-1] for a in scores]
    parts = jnp.split(probs, np.cumsum(widths)[:-1], axis=-1) if prefix else [probs]
    out = jnp.einsum("bkgts,bskd->btkgd", parts[-1], v)
    for p, pv in zip(parts[:-1], values):
      n = pv.shape[0]
      pn = p.reshape(n, b // n, *p.shape[1:])
      out = out + jnp.einsum("nrkgts,nskd->nrtkgd", pn, pv).reshape(out.shape)
    out = out.reshape(b, t, c.num_heads * c.head_dim)
    return mesh_axes.constrain(_dense(c.hidden_size, "o_proj", dtype)(out), *EMBED), (k, v)


class MLP(nn.Module):
  config: ModelConfig

  @nn.compact
  def __call__(self, x):
    c = self.config
    dtype = compute_dtype(c)
    gate = _dense(c.intermediate_size, "gate_proj", dtype)(x)
    up = _dense(c.intermediate_size, "up_proj", dtype)(x)
    hidden = mesh_axes.constrain(nn.silu(gate) * up, *MLP_WIDTH)
    self.sow("intermediates", "hidden", hidden)  # down_proj's input (`cmdp.models.refit`)
    return mesh_axes.constrain(_dense(c.hidden_size, "down_proj", dtype)(hidden), *EMBED)


class Block(nn.Module):
  config: ModelConfig
  return_kv: bool = False

  @nn.compact
  def __call__(self, x, positions, key_mask, prefix=(), prefix_mask=()):
    """One pre-norm layer; returns `(x, kv)`, the carry and output of `nn.scan`: this
    layer's own keys and values when `return_kv`, else None."""
    c = self.config
    dtype = compute_dtype(c)
    x = mesh_axes.constrain(x, *EMBED)
    h, kv = Attention(c, name="self_attn")(
        RMSNorm(c.rms_norm_eps, dtype, name="input_layernorm")(x), positions, key_mask, prefix,
        prefix_mask)
    x = x + h
    self.sow("intermediates", "attn_residual", x)  # read by `cmdp.models.refit` only
    x = x + MLP(c, name="mlp")(RMSNorm(c.rms_norm_eps, dtype, name="post_attention_layernorm")(x))
    return x, (kv if self.return_kv else None)


class Decoder(nn.Module):
  """tokens [B, T] -> logits [B, T - logits_from, V] (float32), after the per-layer keys
  and values of shared prefix levels when given (`prefix`: a tuple of `(k, v)`, each
  `[L, n, P, KVH, hd]`, and `prefix_mask` their `[n, P]` masks; see `Attention`); with
  `return_kv`, `(logits, (k, v))`, the tokens' own keys and values in that layout."""
  config: ModelConfig
  logits_from: int = 0  # first position whose logits are computed (static)
  return_kv: bool = False

  @nn.compact
  def __call__(self, tokens, positions, key_mask, prefix=(), prefix_mask=()):
    c = self.config
    dtype = compute_dtype(c)
    embed = nn.Embed(c.vocab_size, c.hidden_size, dtype=dtype, param_dtype=jnp.float32,
                     embedding_init=nn.initializers.normal(0.02), name="embed_tokens")
    x = mesh_axes.constrain(embed(tokens), *EMBED)
    block = Block
    if c.remat:
      block = nn.remat(Block, prevent_cse=False)
    levels = (tuple(prefix), tuple(prefix_mask)) if prefix else ()
    in_axes = (nn.broadcast, nn.broadcast) + ((0, nn.broadcast) if prefix else ())
    layers = nn.scan(
        block, variable_axes={"params": 0}, split_rngs={"params": True},
        in_axes=in_axes, length=c.num_layers)(c, self.return_kv, name="layers")
    x, kv = layers(x, positions, key_mask, *levels)
    x = RMSNorm(c.rms_norm_eps, dtype, name="norm")(x[:, self.logits_from:])
    if c.tie_word_embeddings:
      logits = embed.attend(x)
    else:
      logits = _dense(c.vocab_size, "lm_head", dtype)(x)
    if c.output_vocab:
      logits = logits[..., :c.output_vocab]
    logits = mesh_axes.constrain(logits.astype(jnp.float32), *VOCAB)
    return (logits, kv) if self.return_kv else logits


@functools.lru_cache(maxsize=16)
def _init_fn(config: ModelConfig):
  tokens = np.zeros((1, 1), np.int32)  # numpy: never a tracer kept in the cache
  init = lambda r: Decoder(config).init(r, tokens, tokens, np.ones((1, 1), bool))["params"]
  return jax.jit(init)  # one compiled program, not one per initialiser op


def init_params(config: ModelConfig, rng: jax.Array) -> dict:
  """Random parameters (normal(0.02) weights, unit norms) in `config.param_dtype`."""
  return cast_params(_init_fn(config.replace(param_dtype="float32"))(rng), config.param_dtype)


def cast_params(params, dtype) -> dict:
  """Every floating leaf in `dtype` (the storage dtype, `ModelConfig.param_dtype`)."""
  dtype = jnp.dtype(dtype)
  return jax.tree.map(
      lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, params)


def token_positions(attention_mask: jax.Array, start: jax.Array | int = 0) -> jax.Array:
  """RoPE positions `[B, T]`: `start` plus the number of real tokens before each real slot.

  Pad slots get some valid position; they are never attended to. Shared by `forward` and
  `cmdp.models.decode` (there `start` is each row's count of real tokens already cached).
  """
  return start + jnp.maximum(jnp.cumsum(attention_mask.astype(jnp.int32), axis=-1) - 1, 0)


def forward(config: ModelConfig, params: dict, tokens: jax.Array,
            attention_mask: jax.Array | None = None, logits_from: int = 0,
            shared_prefix: int = 0, group_prefix: int = 0, group_size: int = 1) -> jax.Array:
  """Causal logits of a batch of (optionally left/right padded) sequences.

  Args:
    config: the model's config.
    params: the parameter tree (see the module docstring).
    tokens: int32 `[B, T]`.
    attention_mask: optional `[B, T]`, 1 for real tokens, 0 for padding. Without it,
      positions are `0..T-1`. With it, each row's positions count only its real tokens and
      padding is never attended to (logits at padded slots are meaningless).
    logits_from: a static position: logits only from there on (every position still
      runs through the layers, since later ones attend to it), e.g. a response's window
      after left-padded prompts; the vocabulary projection is the largest matmul per
      token of a small model.
    shared_prefix: a static count S of leading columns that are the same real tokens in
      every row (a prompt's instruction and few-shot examples; padding then sits after
      them, `cmdp.data.encode_prompts`). They run through the layers once, as one row, and
      every row attends to their keys and values. Row 0's first S columns are read.
    group_prefix: a static count Q > S of leading columns that are the same (tokens and
      mask, padding allowed) in each group of `group_size` adjacent rows: a sampled
      group's prompt. Columns S..Q run once per group (attending to the shared prefix),
      and each row's own columns attend to its group's keys and values in place. The
      first row of each group is read. Off when `group_size` is 1.
    group_size: G, rows per group (dividing B). Under an `activation_mesh` whose batch
      axes split the B rows but not the B / G groups, the groups' columns run per row.

  The caller keeps the contracts. The same numbers as without sharing, for about S / T
  (and (Q - S)(1 - 1/G) / T) less compute; gradients reach the parameters through every
  pass (a shared pass's gradient is its rows' sum).

  Returns:
    float32 logits `[B, T - logits_from, V]`; pure and jittable.
  """
  if attention_mask is None:
    attention_mask = jnp.ones(tokens.shape, bool)
  attention_mask = attention_mask.astype(bool)
  b, width = tokens.shape
  levels = prefix_levels(b, width, shared_prefix, group_prefix, group_size)
  if not levels:
    return Decoder(config, logits_from).apply(
        {"params": params}, tokens, token_positions(attention_mask), attention_mask)
  kv, masks, pieces = (), (), []
  for start, stop, stride in levels + [(levels[-1][1], width, 1)]:
    rows, mask = tokens[::stride, start:stop], attention_mask[::stride, start:stop]
    before = attention_mask[::stride, :start].sum(-1, keepdims=True, dtype=jnp.int32)
    first = min(max(logits_from - start, 0), stop - start)
    if stop == width:
      pieces.append(Decoder(config, first).apply(
          {"params": params}, rows, token_positions(mask, before), mask, kv, masks))
      break
    logits, own = Decoder(config, first, return_kv=True).apply(
        {"params": params}, rows, token_positions(mask, before), mask, kv, masks)
    kv, masks = kv + (own,), masks + (mask,)
    if first < stop - start:
      pieces.append(jnp.repeat(logits, stride, axis=0))
  return pieces[0] if len(pieces) == 1 else jnp.concatenate(pieces, axis=1)


def prefix_levels(rows: int, width: int, shared_prefix: int = 0, group_prefix: int = 0,
                  group_size: int = 1) -> list[tuple[int, int, int]]:
  """The shared passes of `forward`: `(first column, end column, rows per copy)` each, the
  whole batch's prefix first, then each group's; raises on an impossible layout."""
  s, q, g = int(shared_prefix), int(group_prefix), int(group_size)
  if g < 1 or rows % g:
    raise ValueError(f"forward: group_size={g} must be >= 1 and divide the {rows} rows.")
  levels = []
  if s:
    levels.append((0, s, rows))
  # Each group's prompt once, where that is less work per device: a mesh whose batch axes
  # split the rows but not the groups would compute every group's prompt on every device.
  if g > 1 and q > s and mesh_axes.rows_per_shard(rows // g) < mesh_axes.rows_per_shard(rows):
    levels.append((s, q, g))
  if levels and levels[-1][1] >= width:
    raise ValueError(f"forward: shared_prefix={s} / group_prefix={q} must leave at least "
                     f"one of the {width} columns.")
  return levels
