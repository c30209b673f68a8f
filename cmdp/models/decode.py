"""Cached decoding: a prefill and one-token steps over a KV cache, laid out for speed.

The model's one cached path (`cmdp.models.forward_with_cache`, `init_cache`, `KVCache`); the
sampler's loop runs it. Same parameters and same math as `cmdp.models.forward` (the tests check
Llama-3, Qwen2 and Qwen3 configs, float32 and bfloat16, against it), but not the same program:
measured with SmolLM2-135M at B=16 on a 2-core CPU, an `nn.scan` over layers re-copies each
layer's weights out of the stacked `[L, ...]` arrays at every decode step (XLA CPU materialises
the dynamic slice), passes a stacked cache as scanned inputs/outputs (whole-cache copies per
step) and transposes a `[B, S, KVH, hd]` cache for attention; together that cost as much as
the matmuls. Here:

  * per-layer weights are sliced out of the stacked tree once (`decode_params`, outside the
    decode loop) and cast to the compute dtype, so the loop's matmuls read them in place; q/k/v
    become one `[D, q+k+v]` matmul and gate/up one `[D, 2F]` matmul (fewer, larger matmuls:
    with a few rows per step each one costs a fixed overhead); a tied embedding becomes a
    `[D, V]` head;
  * the cache is one buffer per layer (`KVCache`) in the layouts the attention matmuls read
    directly; each step writes only its new slot, in place;
  * a one-token step attends over a window of the cache, the smallest multiple of 128 slots
    that holds its slot (`attention_windows`), not over all of it (not on CPU:
    `WINDOWS_ON_CPU`);
  * under a mesh whose fsdp axis splits the weights, the laid-out weights are gathered whole
    on every device once per rollout (up to `GATHER_BYTES`), not once per step;
  * a prefill can ask for the last position's logits only; RoPE's cos/sin tables are built
    once per step, not once per layer.

Cache and attention stay in the compute dtype (bfloat16 for the TPU configs), with float32
accumulation of the scores and of the weighted values, and a float32 softmax.

RMSNorm and RoPE are the training forward's own (`transformer.RMSNorm`, `transformer.rotate`).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec as P

from cmdp import mesh_axes
from cmdp.models import transformer
from cmdp.models.config import ModelConfig

_MASK_VALUE = -1e30  # as in transformer.py: finite, so an all-masked row stays finite


class DecodeParams(NamedTuple):
  """Weights laid out for decoding (`decode_params`).

  layers: L per-layer subtrees: the keys of `params["layers"]` without the `[L]` axis, except
    that, when fused, `self_attn/qkv` replaces `self_attn/{q,k,v}_proj` and `mlp/gate_up`
    replaces `mlp/{gate,up}_proj` (kernels concatenated along the output axis).
  embedding: `[V, D]` token embeddings.
  norm: the final RMSNorm's params.
  head: `[D, V]` output projection (the transposed embedding when tied).
  """
  layers: tuple
  embedding: jax.Array
  norm: dict
  head: jax.Array


class KVCache(NamedTuple):
  """Decoding state with one buffer per layer; slots are shared by the batch, positions are
  per row (left padding).

  k:      L-tuple of keys: `[B, KVH, hd, S]` (transposed) for a float32 cache, `[B, KVH, S, hd]`
          for a 16-bit one (see `keys_transposed`).
  v:      L-tuple of `[B, KVH, S, hd]` values.
  mask:   `[B, S]` bool, True where a slot holds a real token.
  index:  `[]` int32, next slot to write.
  pos:    `[B]` int32, RoPE position of each row's next real token.
  """
  k: tuple
  v: tuple
  mask: jax.Array
  index: jax.Array
  pos: jax.Array


def _concat(*dense: dict) -> dict:
  """One Dense from several with the same input: kernels (and biases) side by side."""
  fused = {"kernel": jnp.concatenate([d["kernel"] for d in dense], axis=-1)}
  if "bias" in dense[0]:
    fused["bias"] = jnp.concatenate([d["bias"] for d in dense], axis=-1)
  return fused


def _fused(layers: dict) -> dict:
  """The stacked layer tree with q/k/v and gate/up kernels side by side (see `DecodeParams`)."""
  attn, mlp = dict(layers["self_attn"]), dict(layers["mlp"])
  attn["qkv"] = _concat(attn.pop("q_proj"), attn.pop("k_proj"), attn.pop("v_proj"))
  mlp["gate_up"] = _concat(mlp.pop("gate_proj"), mlp.pop("up_proj"))
  return {**layers, "self_attn": attn, "mlp": mlp}


def decode_params(config: ModelConfig, params: dict, fuse: bool = True) -> DecodeParams:
  """Slices (and, if `fuse`, fuses) the stacked layer weights: one copy per rollout, outside
  the decode loop. Kernels and biases are cast to the compute dtype here, once (the model's
  Dense layers cast them at every call, to the same values); norm scales stay float32.

  Pass `fuse=False` under tensor parallelism: a fused kernel's output columns would not split
  along head boundaries, and splitting q/k/v back apart would move data.

  Traced under `mesh_axes.activation_mesh`, the laid-out weights are gathered whole along the
  model width on every device (split over tensor where they were) when they take at most
  `GATHER_BYTES`.
  """
  dtype = transformer.compute_dtype(config)
  stacked = _fused(params["layers"]) if fuse else params["layers"]
  layers = tuple(
      jax.tree_util.tree_map_with_path(
          lambda path, a, l=l: a[l] if path[-1].key == "scale" else a[l].astype(dtype), stacked)
      for l in range(config.num_layers))
  embedding = params["embed_tokens"]["embedding"].astype(dtype)
  head = embedding.T if config.tie_word_embeddings else params["lm_head"]["kernel"].astype(dtype)
  if sum(x.size * x.dtype.itemsize for x in jax.tree.leaves((layers, head))) <= GATHER_BYTES:
    layers, head = _gathered(layers), mesh_axes.constrain(head, None, "vocab")
    embedding = mesh_axes.constrain(embedding, "vocab", None)
  return DecodeParams(layers, embedding, params["norm"], head)


# Under a mesh whose fsdp axis splits the weights' model width, the layers' weights and the
# head are gathered whole on every device once per rollout (`decode_params`), when they
# take at most this many bytes in the compute dtype (Qwen2.5-1.5B in bfloat16: 3.1 GB):
# a decode step then reads them in place. Larger models keep the stored layout, and each
# step all-gathers every layer again (on a v5e-8 with Qwen2.5-1.5B that moved 2.7 GB over
# the interconnect and wrote and read a gathered copy, 5.4 GB of HBM traffic, per step).
# The embedding table is gathered with them (split, its lookup of B rows cost 140 MB more
# per step there).
GATHER_BYTES = 4 << 30

# Logical names of the decode weights' dims, by module: what is split over tensor (heads,
# kv heads, the MLP's width) stays split; the model width is whole.
_OUT_DIM = {"qkv": "heads", "q_proj": "heads", "k_proj": "kv_heads", "v_proj": "kv_heads",
            "gate_up": "mlp", "gate_proj": "mlp", "up_proj": "mlp"}
_IN_DIM = {"o_proj": "heads", "down_proj": "mlp"}


def _gathered(layers: tuple) -> tuple:
  """The per-layer weights pinned whole along the model width (`mesh_axes.constrain`; the
  identity off a mesh)."""
  def names(path, x):
    module, leaf = path[-2].key if len(path) > 1 else None, path[-1].key
    if leaf == "kernel" and module in _OUT_DIM:
      return None, _OUT_DIM[module]
    if leaf == "kernel" and module in _IN_DIM:
      return _IN_DIM[module], None
    if leaf == "bias" and module in _OUT_DIM:
      return (_OUT_DIM[module],)
    return (None,) * x.ndim
  return jax.tree_util.tree_map_with_path(
      lambda path, x: mesh_axes.constrain(x, *names(path, x)), layers)


def keys_transposed(dtype) -> bool:
  """Whether the key cache is stored `[B, KVH, hd, S]` (else `[B, KVH, S, hd]`).

  Measured on a 2-core CPU with SmolLM2-135M at B=16, 191 slots (decode steps without the
  output head, fused weights, best of 12 interleaved rounds): with float32,
  transposed keys let the score matmul read them in order, and each step's strided one-slot
  write stays in place (52 vs 57 ms per step); with bfloat16 that strided write copied the
  whole cache at every step, and row-major keys win (37 vs 44 ms).
  """
  return jnp.dtype(dtype).itemsize == 4


def init_cache(config: ModelConfig, batch_size: int, max_len: int) -> KVCache:
  """An empty cache of `max_len` slots in the compute dtype (see `KVCache` for the layout)."""
  b, kvh, hd = batch_size, config.num_kv_heads, config.head_dim
  dtype = transformer.compute_dtype(config)
  zeros = lambda shape: tuple(jnp.zeros(shape, dtype) for _ in range(config.num_layers))
  k_shape = (b, kvh, hd, max_len) if keys_transposed(dtype) else (b, kvh, max_len, hd)
  return KVCache(zeros(k_shape), zeros((b, kvh, max_len, hd)),
                 jnp.zeros((batch_size, max_len), bool),
                 jnp.zeros((), jnp.int32), jnp.zeros((batch_size,), jnp.int32))


def _cache_names(kv_heads: int, mesh: Mesh, head_dim_at: int) -> tuple:
  """Logical names of one `[B, KVH, ., .]` cache buffer whose head_dim is dim `head_dim_at`:
  kv heads over tensor, or, when they do not divide it (Qwen2.5-1.5B's 2 kv heads over
  tensor=4), head_dim instead, so the cache is never copied on every tensor shard."""
  names = ["activation_batch", None, "cache_length", "cache_length"]
  tensor = dict(mesh_axes.LOGICAL_AXIS_RULES)["cache_kv_heads"]
  if kv_heads % mesh_axes.axis_size(mesh, tensor) == 0:
    names[1] = "cache_kv_heads"
  else:
    names[head_dim_at] = "cache_head_dim"
  return tuple(names)


def cache_specs(cache: KVCache, mesh: Mesh) -> KVCache:
  """PartitionSpecs of a `KVCache` on `mesh`: batch over ("data", "fsdp"), kv heads over
  "tensor" (or head_dim, see `_cache_names`), each where divisible.

  k: one `[B, KVH, hd, S]` (float32) or `[B, KVH, S, hd]` buffer per layer; v: `[B, KVH, S,
  hd]`; mask `[B, S]`; index `[]`; pos `[B]`.
  """
  batch = mesh_axes.BATCH_AXES

  def spec(x, transposed):
    names = _cache_names(x.shape[1], mesh, 2 if transposed else 3)
    return mesh_axes.fit_spec(mesh_axes.logical_spec(names), x.shape, mesh, "cache")
  k = tuple(spec(x, keys_transposed(x.dtype)) for x in cache.k)
  v = tuple(spec(x, False) for x in cache.v)
  return KVCache(k=k, v=v, mask=mesh_axes.fit_spec(P(batch, None), cache.mask.shape, mesh),
                 index=P(), pos=mesh_axes.fit_spec(P(batch), cache.pos.shape, mesh))


def constrain_cache(x: jax.Array, head_dim_at: int) -> jax.Array:
  """One `[B, KVH, ., .]` cache buffer pinned as `cache_specs` lays it out (the identity
  outside `mesh_axes.activation_mesh`)."""
  mesh = mesh_axes.traced_mesh()
  if mesh is None:
    return x
  return mesh_axes.constrain(x, *_cache_names(x.shape[1], mesh, head_dim_at))


def _dense(x, p, dtype):
  """`x @ kernel (+ bias)` in `dtype`, accumulated in float32 and rounded once, as the model's
  Dense does; asking XLA for the float32 result is what keeps bfloat16 matmuls fast on CPU."""
  y = jnp.dot(x.astype(dtype), p["kernel"].astype(dtype),
              preferred_element_type=jnp.float32).astype(dtype)
  return y + p["bias"].astype(dtype) if "bias" in p else y


def _write(cache: jax.Array, new: jax.Array, at: tuple) -> jax.Array:
  """`dynamic_update_slice` in place. On CPU a 16-bit float cache is updated as uint16 bits:
  XLA CPU otherwise widens a bfloat16 update to float32 over the whole cache at every step.
  Elsewhere the update is plain: on TPU each bitcast is a copy of the whole buffer (four
  copies of each layer's keys and values per step; in the compiled decode step of
  Qwen2.5-1.5B at 64 rows per v5e chip, 7.5 of its 19 GB)."""
  new = new.astype(cache.dtype)
  plain = lambda c, n: jax.lax.dynamic_update_slice(c, n, at)
  if cache.dtype.itemsize != 2:
    return plain(cache, new)

  def as_bits(c, n):
    bits = lambda x, t: jax.lax.bitcast_convert_type(x, t)
    return bits(plain(bits(c, jnp.uint16), bits(n, jnp.uint16)), c.dtype)
  return jax.lax.platform_dependent(cache, new, cpu=as_bits, default=plain)


def _mlp(c: ModelConfig, p: dict, x):
  """SwiGLU, as `transformer.MLP`: down(silu(gate(x)) * up(x))."""
  dtype = transformer.compute_dtype(c)
  if "gate_up" in p:
    gate, up = jnp.split(_dense(x, p["gate_up"], dtype), 2, axis=-1)
  else:
    gate, up = _dense(x, p["gate_proj"], dtype), _dense(x, p["up_proj"], dtype)
  hidden = mesh_axes.constrain(jax.nn.silu(gate) * up, *transformer.MLP_WIDTH)
  return mesh_axes.constrain(_dense(hidden, p["down_proj"], dtype), *transformer.EMBED)


def attention_windows(slots: int, tokens: int) -> tuple[int, ...]:
  """The static cache windows a call over `tokens` new tokens chooses from: for one-token
  steps, the first `WINDOW_SLOTS`, 2 x, ... slots, then all `slots` (the step attends over
  the smallest window holding its slot, so it reads the filled part of the cache, up to
  WINDOW_SLOTS - 1 slots more, not the whole); for prefills, all slots."""
  if tokens != 1 or slots <= WINDOW_SLOTS:
    return (slots,)
  return tuple(range(WINDOW_SLOTS, slots, WINDOW_SLOTS)) + (slots,)


# A one-token step reads the cache in windows of this many slots (`attention_windows`):
# 128, the lane width of TPU tiles.
WINDOW_SLOTS = 128

# Whether XLA CPU also attends over windows. It does not by default: there the switch
# costs more than the slots it skips (SmolLM2-135M at B=16, a 384-slot cache, steps in
# the 256-slot window: 68 vs 59 ms a step in bfloat16, 93 vs 90 in float32), so a CPU
# step attends over the whole cache (the last window; the same numbers).
WINDOWS_ON_CPU = False


def _attention(c: ModelConfig, p: dict, x, rope, bias, k_cache, v_cache, index,
               windows: tuple[int, ...]):
  """Self-attention of T new tokens over the cache.

  x: [B, T, D]; rope: `transformer.rope_tables` of the T positions; bias: [B, 1, 1, T, S]
  additive mask (0 or -1e30); k_cache, v_cache: one layer's buffers (see `KVCache`);
  windows: `attention_windows`: the scores and values are read from the first w slots of
  the smallest window w that holds the new tokens' slots (`lax.switch` over the windows;
  the slots past it are masked, so the numbers are those of the whole cache). Returns the
  output [B, T, D] and the updated buffers.
  """
  dtype = transformer.compute_dtype(c)
  b, t, _ = x.shape
  hd, h, kvh = c.head_dim, c.num_heads, c.num_kv_heads
  if "qkv" in p:
    q, k, v = jnp.split(_dense(x, p["qkv"], dtype), [h * hd, (h + kvh) * hd], axis=-1)
  else:
    q, k, v = (_dense(x, p[name], dtype) for name in ("q_proj", "k_proj", "v_proj"))
  q = mesh_axes.constrain(q.reshape(b, t, h, hd), *transformer.HEADS)
  k = mesh_axes.constrain(k.reshape(b, t, kvh, hd), *transformer.KV_HEADS)
  v = mesh_axes.constrain(v.reshape(b, t, kvh, hd), *transformer.KV_HEADS)
  if c.qk_norm:
    q = transformer.RMSNorm(c.rms_norm_eps, dtype).apply({"params": p["q_norm"]}, q)
    k = transformer.RMSNorm(c.rms_norm_eps, dtype).apply({"params": p["k_norm"]}, k)
  q, k = transformer.rotate(q, *rope), transformer.rotate(k, *rope)
  zero = jnp.zeros((), jnp.int32)
  v_cache = _write(v_cache, v.swapaxes(1, 2), (zero, zero, index, zero))
  v_cache = constrain_cache(v_cache, 3)
  transposed = keys_transposed(k_cache.dtype)
  if transposed:
    k_cache = _write(k_cache, k.transpose(0, 2, 3, 1), (zero, zero, zero, index))
    k_cache = constrain_cache(k_cache, 2)
    scores_spec = "bkqd,bkds->bkqs"
  else:
    k_cache = _write(k_cache, k.swapaxes(1, 2), (zero, zero, index, zero))
    k_cache = constrain_cache(k_cache, 3)
    scores_spec = "bkqd,bksd->bkqs"
  # Queries as [B, KVH, groups * T, hd]: plain batched matmuls over the cache layout (for
  # T = 1 every transpose here is a free reshape).
  groups = h // kvh
  qg = q.reshape(b, t, kvh, groups, hd).transpose(0, 2, 3, 1, 4).reshape(b, kvh, groups * t, hd)

  def attend(w, qg, k_cache, v_cache, bias):
    keys = k_cache[..., :w] if transposed else k_cache[:, :, :w]
    scores = jnp.einsum(scores_spec, qg, keys.astype(dtype),
                        preferred_element_type=jnp.float32) / math.sqrt(hd)
    scores = scores.reshape(b, kvh, groups, t, w) + bias[..., :w]
    probs = jax.nn.softmax(scores, axis=-1).astype(dtype).reshape(b, kvh, groups * t, w)
    return jnp.einsum("bkqs,bksd->bkqd", probs, v_cache[:, :, :w].astype(dtype),
                      preferred_element_type=jnp.float32).astype(dtype)
  branches = [lambda *a, w=w: attend(w, *a) for w in windows]
  operands = (qg, k_cache, v_cache, bias)
  if len(branches) == 1:
    out = branches[0](*operands)
  else:  # the first window past the last new slot; on CPU the last (see WINDOWS_ON_CPU)
    which = jnp.sum(jnp.asarray(windows[:-1]) < index + t)
    switched = lambda *a: jax.lax.switch(which, branches, *a)
    out = (switched(*operands) if WINDOWS_ON_CPU else
           jax.lax.platform_dependent(*operands, cpu=branches[-1], default=switched))
  out = out.reshape(b, kvh, groups, t, hd).transpose(0, 3, 1, 2, 4).reshape(b, t, h * hd)
  return (mesh_axes.constrain(_dense(out, p["o_proj"], dtype), *transformer.EMBED), k_cache,
          v_cache)


def forward_with_cache(config: ModelConfig, params: dict | DecodeParams, tokens: jax.Array,
                       cache: KVCache, attention_mask: jax.Array | None = None, *,
                       last_only: bool = False,
                       windows: tuple[int, ...] | None = None) -> tuple[jax.Array, KVCache]:
  """Runs `tokens [B, T]` after what `cache` holds (prefill: T = P; decoding: T = 1).

  Args:
    config: the model's config.
    params: `decode_params(config, params)`, or the parameter tree itself, which is then laid
      out at this call (inside a decode loop, lay it out once outside instead).
    tokens: int32 `[B, T]`.
    cache: from `init_cache` or a previous call; the caller keeps `cache.index + T <= max_len`.
    attention_mask: optional bool `[B, T]`; False marks padding (left padding of prompts, or
      the feed of a finished row): its slot is never attended to and positions do not count it.
    last_only: return logits of the last position only (what a prefill needs).
    windows: the cache windows to attend over (default `attention_windows(S, T)`); one
      window `(w,)` makes every call read the first w slots (the planner's cost of a step
      that attends over w slots; the caller keeps `cache.index + T <= w`).

  Returns:
    float32 logits `[B, T, V]` (`[B, V]` if `last_only`; V is `output_vocab` when set) and
    the updated cache. Same numbers as `cmdp.models.forward` on the whole sequence; pure and
    jittable.
  """
  c = config
  if not isinstance(params, DecodeParams):
    params = decode_params(c, params)
  dtype = transformer.compute_dtype(c)
  if attention_mask is None:
    attention_mask = jnp.ones(tokens.shape, bool)
  token_mask = attention_mask.astype(bool)
  t = tokens.shape[1]
  s = cache.mask.shape[1]
  windows = attention_windows(s, t) if windows is None else tuple(windows)
  mask = jax.lax.dynamic_update_slice_in_dim(cache.mask, token_mask, cache.index, axis=1)
  q_slots = cache.index + jnp.arange(t)
  allowed = mask[:, None, :] & (jnp.arange(s)[None, None, :] <= q_slots[None, :, None])
  bias = jnp.where(allowed, 0.0, _MASK_VALUE)[:, None, None]  # [B, 1, 1, T, S], shared by layers
  positions = transformer.token_positions(token_mask, cache.pos[:, None])
  rope = transformer.rope_tables(positions, transformer.rope_inv_freq(c))
  x = mesh_axes.constrain(params.embedding[tokens].astype(dtype), *transformer.EMBED)
  norm = transformer.RMSNorm(c.rms_norm_eps, dtype)
  ks, vs = [], []
  for layer, k_cache, v_cache in zip(params.layers, cache.k, cache.v):
    h = norm.apply({"params": layer["input_layernorm"]}, x)
    h, k_cache, v_cache = _attention(c, layer["self_attn"], h, rope, bias, k_cache, v_cache,
                                     cache.index, windows)
    x = x + h
    x = x + _mlp(c, layer["mlp"], norm.apply({"params": layer["post_attention_layernorm"]}, x))
    x = mesh_axes.constrain(x, *transformer.EMBED)
    ks.append(k_cache)
    vs.append(v_cache)
  if last_only:
    x = x[:, -1]
  x = norm.apply({"params": params.norm}, x)
  logits = jnp.dot(x.astype(dtype), params.head.astype(dtype),
                   preferred_element_type=jnp.float32)
  if c.output_vocab:
    logits = logits[..., :c.output_vocab]
  vocab = transformer.VOCAB if logits.ndim == 3 else transformer.VOCAB[::2]  # [B, V]
  logits = mesh_axes.constrain(logits, *vocab)
  new_cache = KVCache(tuple(ks), tuple(vs), mask, cache.index + t,
                      cache.pos + token_mask.sum(-1).astype(jnp.int32))
  return logits.astype(jnp.float32), new_cache
