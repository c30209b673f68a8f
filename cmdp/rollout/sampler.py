"""Batched autoregressive sampling with a KV cache, compiled once per shape and setting.

Usage (the trainer's pattern: build once, call every step with same-shaped batches):

    sampler = make_sampler(config, max_new_tokens=128, temperature=0.7, top_k=50,
                           eos_ids=(eos_id,), pad_id=pad_id)          # mesh=... to shard
    rollout = sampler(params, prompt_tokens, prompt_mask, rng)        # one compile per [B, P]

`sample(config, params, ...)` is the one-shot form; it caches samplers by their settings.
Everything static (config, `max_new_tokens`, the sampling settings, stop ids, pad id, mesh)
is bound by `make_sampler`; `B` and `P` are fixed by the first call's shapes, so pad prompts to
a fixed `P` to avoid recompiling. `Sampler.jitted._cache_size()` counts the compilations.

Algorithm (model math: `cmdp.models.forward_with_cache`, checked against `cmdp.models.forward`):
the weights are laid out for decoding once per call, one prefill pass over the left-padded prompt
(after a `shared_prefix` prefilled once, as one row, when the prompts share one) fills a
cache of `P + N - 1` slots and gives the first token; with `repeat` = G, each prompt is
prefilled once and its cache and first logits copied to its G rows; then a `lax.while_loop` of
single-token steps runs until every row has emitted a stop token or N tokens exist. The cache
lives in the loop carry, so XLA updates it in place; nothing goes to the host until the end.
Step `i` draws with `fold_in(rng, i)`, so rows are independent and a fixed key reproduces.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from cmdp import models, sharding
from cmdp.models import ModelConfig
from cmdp.rollout.processors import check_settings, process_logits, sample_token


class Rollout(NamedTuple):
  """A batch of prompts and their sampled continuations; all arrays `[B, P + N]` or `[B]`.

  tokens:          int32 `[B, P+N]`: the (left-padded) prompt, then the response; `pad_id`
                   after a row's stop token.
  attention_mask:  bool `[B, P+N]`: real tokens (prompt non-pad, response incl. the stop token).
  response_mask:   bool `[B, P+N]`: generated tokens incl. the stop token.
  logprobs:        float32 `[B, P+N]`: natural-log probability of each generated token under
                   the sampling distribution (after temperature / top-k / top-p); 0 elsewhere.
  lengths:         int32 `[B]`: generated tokens per row, incl. the stop token.
  finished:        bool `[B]`: the row emitted a stop token (else it hit `max_new_tokens`).
  """
  tokens: jax.Array
  attention_mask: jax.Array
  response_mask: jax.Array
  logprobs: jax.Array
  lengths: jax.Array
  finished: jax.Array


@dataclasses.dataclass(frozen=True)
class SamplingSettings:
  """Static sampling settings (hashable: part of the compile signature)."""
  max_new_tokens: int  # N, generated slots per row
  temperature: float = 1.0  # divides the logits (> 0)
  top_k: int = 0  # keep the k most likely tokens (0: off)
  top_p: float = 1.0  # keep the nucleus of this mass (1: off)
  greedy: bool = False  # argmax instead of sampling
  eos_ids: tuple[int, ...] = ()  # stop tokens (EOS and extra stops); () never stops early
  pad_id: int = 0  # emitted after a row stops
  # Leading prompt columns that are the same real tokens in every row (an instruction and
  # few-shot examples; `cmdp.data.encode_prompts(shared_prefix=...)`): prefilled once, as
  # one row, and their cache broadcast to the batch. 0: off.
  shared_prefix: int = 0

  def __post_init__(self):
    if int(self.max_new_tokens) != self.max_new_tokens or self.max_new_tokens < 1:
      raise ValueError(f"max_new_tokens={self.max_new_tokens!r} must be an int >= 1.")
    if int(self.shared_prefix) != self.shared_prefix or self.shared_prefix < 0:
      raise ValueError(f"shared_prefix={self.shared_prefix!r} must be an int >= 0.")
    check_settings(self.temperature, self.top_k, self.top_p)
    if not isinstance(self.eos_ids, tuple) or not all(isinstance(i, int) for i in self.eos_ids):
      raise ValueError(f"eos_ids={self.eos_ids!r} must be a tuple of ints, e.g. (eos_id,).")


# A prefill holds every prompt position's activations at once (the MLP's [rows, P, 2F]
# float32 products, the [rows, heads, P, slots] scores); where one device would hold more
# than this many prompt tokens, the prompt is prefilled in chunks of columns, one after
# the other over the same cache (`prefill_chunk`; the same numbers per query).
PREFILL_TOKENS_PER_DEVICE = 4096


def prefill_chunk(rows_per_device: int, width: int) -> int:
  """Columns per prefill pass: the whole `width`, or its largest divisor that keeps
  `rows_per_device` x columns within PREFILL_TOKENS_PER_DEVICE."""
  if rows_per_device * width <= PREFILL_TOKENS_PER_DEVICE:
    return width
  fits = [c for c in range(1, width + 1)
          if width % c == 0 and rows_per_device * c <= PREFILL_TOKENS_PER_DEVICE]
  return max(fits, default=1)


def rows_per_device(rows: int, mesh) -> int:
  """Rows of a `[rows, ...]` batch each device holds (all of them where they do not split)."""
  return sharding.rows_per_shard(rows, mesh) if mesh is not None else rows


def prefill_rows(prompts: int, repeat: int, mesh) -> int:
  """Rows the prefill runs for `prompts` prompts sampled `repeat` times each: each prompt
  once, unless the prompts do not split over `mesh`'s batch axes where their rows do (every
  device would prefill every prompt): then every row, on its own device."""
  if rows_per_device(prompts, mesh) < rows_per_device(prompts * repeat, mesh):
    return prompts
  return prompts * repeat


def _prefill(config: ModelConfig, dparams, tokens, mask, cache, chunk: int):
  """`forward_with_cache(..., last_only=True)` over `tokens [B, W]`, `chunk` columns at a
  time (a `lax.scan` over W / chunk passes; one pass when chunk = W)."""
  b, width = tokens.shape
  if chunk >= width:
    return models.forward_with_cache(config, dparams, tokens, cache, mask, last_only=True)
  split = lambda x: x.reshape(b, width // chunk, chunk).swapaxes(0, 1)  # [passes, B, chunk]

  def one(carry, xs):
    logits, cache = models.forward_with_cache(config, dparams, xs[0], carry[1], xs[1],
                                              last_only=True)
    return (logits, cache), None
  vocab = config.output_vocab or config.vocab_size
  start = (jnp.zeros((b, vocab), jnp.float32), cache)
  return jax.lax.scan(one, start, (split(tokens), split(mask)))[0]


def _constrain(x, spec, mesh):
  """`x` pinned to `spec` on `mesh`; as is without one."""
  if mesh is None:
    return x
  return jax.lax.with_sharding_constraint(x, jax.sharding.NamedSharding(mesh, spec))


def _constrain_cache(cache, mesh):
  """The cache pinned to its layout on `mesh` (`models.cache_specs`); as is without one."""
  if mesh is None:
    return cache
  return jax.tree.map(lambda x, spec: _constrain(x, spec, mesh), cache,
                      models.cache_specs(cache, mesh))


def _repeat_rows(x, repeat: int, mesh):
  """Each row of `x` `repeat` times (copies adjacent), its rows over the batch axes; a
  scalar as is."""
  if not x.ndim:
    return x
  return _constrain(jnp.repeat(x, repeat, axis=0), sharding.batch_spec(), mesh)


def _decode(config: ModelConfig, settings: SamplingSettings, mesh, repeat: int, params,
            prompt_tokens, prompt_mask, rng) -> Rollout:
  """The traced sampler body (see the module docstring); each prompt row is sampled
  `repeat` times (copies adjacent), from one prefill of it."""
  s = settings
  n = s.max_new_tokens
  prompt_mask = prompt_mask.astype(bool)
  eos = jnp.asarray(s.eos_ids, jnp.int32)

  b, p = prompt_tokens.shape[0] * repeat, prompt_tokens.shape[1]
  if repeat > 1 and prefill_rows(b // repeat, repeat, mesh) == b:  # each row on its device
    prompt_tokens, prompt_mask = (_repeat_rows(x, repeat, mesh)
                                  for x in (prompt_tokens, prompt_mask))
    repeat = 1
  unique = prompt_tokens.shape[0]  # each prompt once: prefilled once, for its whole group

  def pick(step, logits, done):
    tok, lp = sample_token(jax.random.fold_in(rng, step), logits, temperature=s.temperature,
                           top_k=s.top_k, top_p=s.top_p, greedy=s.greedy)
    tok = jnp.where(done, s.pad_id, tok)
    lp = jnp.where(done, 0.0, lp)
    if s.eos_ids:
      done = done | jnp.isin(tok, eos)
    return tok, lp, done

  # Laid out once, outside the loop; unfused under tensor parallelism (see `decode_params`).
  dparams = models.decode_params(
      config, params, fuse=mesh is None or mesh.shape.get("tensor", 1) == 1)
  shared = s.shared_prefix
  if shared:  # the shared prefix once, as one row; its cache copied to every prompt
    one = models.init_cache(config, 1, p + n - 1)
    _, one = models.forward_with_cache(config, dparams, prompt_tokens[:1, :shared], one)
    cache = jax.tree.map(
        lambda x: jnp.broadcast_to(x, (unique,) + x.shape[1:]) if x.ndim else x, one)
  else:
    cache = models.init_cache(config, unique, p + n - 1)  # the last token is never fed
  cache = _constrain_cache(cache, mesh)
  chunk = prefill_chunk(rows_per_device(unique, mesh), p - shared)
  logits, cache = _prefill(config, dparams, prompt_tokens[:, shared:], prompt_mask[:, shared:],
                           cache, chunk)
  if repeat > 1:  # each prompt's cache and first logits copied to its `repeat` rows
    prompt_tokens, prompt_mask, logits = (_repeat_rows(x, repeat, mesh)
                                          for x in (prompt_tokens, prompt_mask, logits))
    cache = _constrain_cache(jax.tree.map(lambda x: jnp.repeat(x, repeat, axis=0)
                                          if x.ndim else x, cache), mesh)
  tok, lp, done = pick(0, logits, jnp.zeros((b,), bool))
  out_tok = jnp.full((b, n), s.pad_id, jnp.int32).at[:, 0].set(tok)
  out_lp = jnp.zeros((b, n), jnp.float32).at[:, 0].set(lp)
  out_mask = jnp.zeros((b, n), bool).at[:, 0].set(True)

  def cond(state):
    step, _, done, *_ = state
    return (step < n) & ~jnp.all(done)

  def body(state):
    step, tok, done, cache, out_tok, out_lp, out_mask = state
    logits, cache = models.forward_with_cache(config, dparams, tok[:, None], cache,
                                              ~done[:, None])
    new_tok, new_lp, new_done = pick(step, logits[:, 0], done)
    out_tok = jax.lax.dynamic_update_slice_in_dim(out_tok, new_tok[:, None], step, axis=1)
    out_lp = jax.lax.dynamic_update_slice_in_dim(out_lp, new_lp[:, None], step, axis=1)
    out_mask = jax.lax.dynamic_update_slice_in_dim(out_mask, ~done[:, None], step, axis=1)
    return step + 1, new_tok, new_done, cache, out_tok, out_lp, out_mask

  state = (jnp.int32(1), tok, done, cache, out_tok, out_lp, out_mask)
  _, _, done, _, out_tok, out_lp, out_mask = jax.lax.while_loop(cond, body, state)
  return Rollout(
      tokens=jnp.concatenate([prompt_tokens.astype(jnp.int32), out_tok], axis=1),
      attention_mask=jnp.concatenate([prompt_mask, out_mask], axis=1),
      response_mask=jnp.concatenate([jnp.zeros((b, p), bool), out_mask], axis=1),
      logprobs=jnp.concatenate([jnp.zeros((b, p), jnp.float32), out_lp], axis=1),
      lengths=out_mask.sum(axis=1, dtype=jnp.int32),
      finished=done)


def _local(x) -> np.ndarray:
  """A host copy of `x`; of a multi-process global array, the rows this process holds."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    return np.concatenate([np.asarray(s.data) for s in x.addressable_shards])
  return np.asarray(x)


def check_prompts(prompt_tokens, prompt_mask, shared_prefix: int = 0) -> None:
  """Raises ValueError unless prompts are `[B, P]`, left padded, with >= 1 real token per row.

  With `shared_prefix` S > 0: the first S columns are real and the same in every row, and
  the left padding sits after them (`cmdp.data.encode_prompts(shared_prefix=...)`).
  Skipped for traced arrays (inside an outer jit); a multi-process global array is checked
  on the rows this process holds.
  """
  if isinstance(prompt_tokens, jax.core.Tracer) or isinstance(prompt_mask, jax.core.Tracer):
    return
  if np.ndim(prompt_tokens) != 2 or np.shape(prompt_tokens) != np.shape(prompt_mask):
    raise ValueError(
        f"prompt_tokens {np.shape(prompt_tokens)} and prompt_mask {np.shape(prompt_mask)} must "
        "both be [B, P].")
  mask = _local(prompt_mask).astype(bool)
  if shared_prefix:
    if not 0 < shared_prefix < mask.shape[1]:
      raise ValueError(f"shared_prefix={shared_prefix} must be less than the prompt width "
                       f"{mask.shape[1]}.")
    head = _local(prompt_tokens)[:, :shared_prefix]
    if not mask[:, :shared_prefix].all() or (head != head[:1]).any():
      raise ValueError(
          f"shared_prefix={shared_prefix}: the first {shared_prefix} prompt columns must be "
          "the same real tokens in every row (cmdp.data.encode_prompts(shared_prefix=...) "
          "lays prompts out so), or pass shared_prefix=0.")
    mask = mask[:, shared_prefix:]
  if not mask[:, -1].all():
    rows = np.flatnonzero(~mask[:, -1]).tolist()
    raise ValueError(
        f"prompt_mask rows {rows} end with padding: prompts must be LEFT padded with at least "
        "one real token (move the padding to the front).")
  if (np.diff(mask.astype(np.int8), axis=1) < 0).any():
    raise ValueError("prompt_mask has a real token before a pad: prompts must be LEFT padded.")


def _as_ids(eos_ids) -> tuple[int, ...]:
  try:
    return tuple(int(i) for i in eos_ids)
  except (TypeError, ValueError) as err:
    raise ValueError(
        f"eos_ids={eos_ids!r} must be a sequence of token ids, e.g. (eos_id,).") from err


class Sampler:
  """`sampler(params, prompt_tokens [B, P], prompt_mask [B, P], rng) -> Rollout`.

  With `repeat` > 1 the prompts are `[B / repeat, P]`, each sampled `repeat` times: the
  rows are repeated inside the compiled program (copies adjacent, one group per prompt).

  `jitted` is the jitted function (`jitted._cache_size()` counts its compilations). With a
  mesh it is built at the first call, when the params tree fixes the in-shardings.
  """

  def __init__(self, config: ModelConfig, settings: SamplingSettings,
               mesh: jax.sharding.Mesh | None, repeat: int = 1):
    if int(repeat) != repeat or repeat < 1:
      raise ValueError(f"repeat={repeat!r} must be an int >= 1.")
    self.config, self.settings, self.mesh, self.repeat = config, settings, mesh, int(repeat)
    self._fn = functools.partial(_decode, config, settings, mesh, self.repeat)
    self._jitted = jax.jit(self._fn) if mesh is None else None
    self._prompt_spec = None

  @property
  def jitted(self) -> Callable:
    if self._jitted is None:
      raise RuntimeError("A sharded Sampler is compiled at its first call; call it first.")
    return self._jitted

  def prompt_spec(self, prompt_rows: int) -> jax.sharding.PartitionSpec:
    """The prompts' sharding on the mesh: rows over the batch axes; with `repeat` > 1,
    replicated when the un-repeated rows do not split over them (`sharding.rows_spec`)."""
    if self.repeat == 1:
      return sharding.batch_spec()
    return sharding.rows_spec(prompt_rows, self.mesh)

  def _build_sharded(self, params, prompt_spec) -> Callable:
    batch = sharding.batch_spec()
    return sharding.jit_sharded(
        self._fn, self.mesh,
        in_specs=(sharding.param_specs(params, self.mesh, self.config), prompt_spec,
                  prompt_spec, jax.sharding.PartitionSpec()),
        out_specs=Rollout(*([batch] * len(Rollout._fields))))

  def _compiled_for(self, params, prompt_tokens) -> Callable:
    """The jitted sampler, built for `params` on a mesh; checks the batch splits over it."""
    if self.mesh is not None:
      shards = self.mesh.shape["data"] * self.mesh.shape["fsdp"]
      rows = np.shape(prompt_tokens)[0]
      if rows * self.repeat % shards:
        raise ValueError(
            f"batch size {rows * self.repeat} must be a multiple of data*fsdp={shards} "
            "of the mesh; pad the batch or change the mesh.")
      spec = self.prompt_spec(rows)
      if self._jitted is None or spec != self._prompt_spec:
        self._jitted, self._prompt_spec = self._build_sharded(params, spec), spec
    return self._jitted

  def lower(self, params, prompt_tokens, prompt_mask, rng) -> jax.stages.Lowered:
    """The sampler lowered for these arguments, without running it.

    Arguments may be arrays or `jax.ShapeDtypeStruct`s (with shardings on a mesh), so a
    planner can compile the sampler ahead of time and read XLA's memory and cost analyses
    (`.compile().memory_analysis()`). Prompts are not inspected beyond their shape.
    """
    return self._compiled_for(params, prompt_tokens).lower(params, prompt_tokens, prompt_mask,
                                                           rng)

  def __call__(self, params, prompt_tokens, prompt_mask, rng, *, check: bool = True) -> Rollout:
    """Samples; `check=False` skips `check_prompts` (for prompts already checked on the
    host: the check reads device prompts back to the host)."""
    if check:
      check_prompts(prompt_tokens, prompt_mask, self.settings.shared_prefix)
    return self._compiled_for(params, prompt_tokens)(params, prompt_tokens, prompt_mask, rng)


def make_sampler(config: ModelConfig, *, max_new_tokens: int, temperature: float = 1.0,
                 top_k: int = 0, top_p: float = 1.0, greedy: bool = False,
                 eos_ids: tuple[int, ...] = (), pad_id: int = 0,
                 mesh: jax.sharding.Mesh | None = None, repeat: int = 1,
                 shared_prefix: int = 0) -> Sampler:
  """Builds the compiled sampler for one config and one set of sampling settings.

  Args:
    config: the model's config.
    max_new_tokens: N, tokens generated per row (the loop stops early once all rows stopped).
    temperature, top_k, top_p: the sampling distribution (see `cmdp.rollout.processors`).
    greedy: argmax decoding (log-probs are still those of the processed distribution).
    eos_ids: stop token ids (EOS plus any extra stop tokens).
    pad_id: token emitted after a row stops.
    mesh: optional `cmdp.sharding.make_mesh` mesh; params are then expected sharded by
      `sharding.param_specs`, prompts by `sharding.batch_spec()`, and B must be a multiple of
      `data * fsdp`. Outputs come back batch-sharded.
    repeat: samples per prompt: the sampler takes `[B / repeat, P]` prompts and repeats
      each row `repeat` times inside the compiled program (copies adjacent); on a mesh the
      prompts are sharded by `Sampler.prompt_spec`.
    shared_prefix: S > 0 when the first S prompt columns are the same real tokens in every
      row (`cmdp.data.encode_prompts(shared_prefix=...)`): they are prefilled once, as one
      row. The rollout is the same; the prefill costs about `S / P` less.

  Returns:
    A `Sampler`; the same one serves every call with same-shaped `[B, P]` prompts.
  """
  settings = SamplingSettings(max_new_tokens=max_new_tokens, temperature=float(temperature),
                              top_k=int(top_k), top_p=float(top_p), greedy=bool(greedy),
                              eos_ids=_as_ids(eos_ids), pad_id=int(pad_id),
                              shared_prefix=int(shared_prefix))
  return Sampler(config, settings, mesh, repeat)


@functools.lru_cache(maxsize=32)
def _cached_sampler(config, mesh, **settings) -> Sampler:
  return make_sampler(config, mesh=mesh, **settings)


def sample(config: ModelConfig, params, prompt_tokens, prompt_mask, rng, *, max_new_tokens: int,
           temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, greedy: bool = False,
           eos_ids: tuple[int, ...] = (), pad_id: int = 0,
           mesh: jax.sharding.Mesh | None = None, shared_prefix: int = 0) -> Rollout:
  """Samples continuations of left-padded prompts (one-shot form of `make_sampler`).

  Args:
    config: the model's config.
    params: the model's parameter tree.
    prompt_tokens: int32 `[B, P]`, LEFT padded.
    prompt_mask: `[B, P]`, 1 for real tokens; every row needs at least one.
    rng: a PRNG key; the same key gives the same rollout.
    max_new_tokens, temperature, top_k, top_p, greedy, eos_ids, pad_id, mesh,
      shared_prefix: see `make_sampler`. All are static: a new value compiles a new
      sampler (cached).

  Returns:
    A `Rollout` with `[B, P + max_new_tokens]` arrays.
  """
  sampler = _cached_sampler(config, mesh, max_new_tokens=max_new_tokens,
                            temperature=float(temperature), top_k=int(top_k), top_p=float(top_p),
                            greedy=bool(greedy), eos_ids=_as_ids(eos_ids), pad_id=int(pad_id),
                            shared_prefix=int(shared_prefix))
  return sampler(params, prompt_tokens, prompt_mask, rng)


def rollout_logprobs(config: ModelConfig, params, tokens: jax.Array, attention_mask: jax.Array,
                     response_mask: jax.Array, *, temperature: float = 1.0, top_k: int = 0,
                     top_p: float = 1.0, shared_prefix: int = 0) -> jax.Array:
  """Recomputes `Rollout.logprobs` with one full `forward` pass (no cache).

  Args:
    config, params: the model.
    tokens: int32 `[B, T]` (a rollout's `tokens`).
    attention_mask: `[B, T]` real tokens.
    response_mask: `[B, T]` tokens whose log-prob is wanted (each needs a real token before it).
    temperature, top_k, top_p: the sampling distribution used (greedy rollouts: the same
      settings they were made with).
    shared_prefix: as `models.forward`'s (the sampler's own setting).

  Returns:
    float32 `[B, T]`: `log p(tokens[t] | tokens[<t])` under the processed distribution where
    `response_mask`, else 0. Jittable (settings static).
  """
  logits = models.forward(config, params, tokens, attention_mask,
                          shared_prefix=shared_prefix)[:, :-1]
  logp = process_logits(logits, temperature=temperature, top_k=top_k, top_p=top_p)
  picked = jnp.take_along_axis(logp, tokens[:, 1:, None].astype(jnp.int32), axis=-1)[..., 0]
  picked = jnp.concatenate([jnp.zeros_like(picked[:, :1]), picked], axis=1)
  return jnp.where(response_mask, picked, 0.0)


