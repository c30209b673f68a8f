"""Logit processing for sampling: temperature, top-k, top-p (nucleus), argmax and draws.

The *sampling distribution* of a step is what these functions define: logits divided by the
temperature, restricted to the `top_k` largest, then to the smallest prefix (in descending
probability) whose mass reaches `top_p`, renormalised. The sampler draws from it and records
`log p(token)` under it; `cmdp.rollout.rollout_logprobs` recomputes the same numbers from a
full forward pass. Ties at a cut-off value are all kept (the cut is a threshold on the value).

All functions are pure and jittable; `temperature`, `top_k` and `top_p` are Python numbers
(static under jit).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def check_settings(temperature: float, top_k: int, top_p: float) -> None:
  """Raises ValueError naming the bad field and the fix."""
  if not temperature > 0:
    raise ValueError(f"temperature={temperature!r} must be > 0; use greedy=True for argmax.")
  if int(top_k) != top_k or top_k < 0:
    raise ValueError(f"top_k={top_k!r} must be an int >= 0 (0 turns top-k off).")
  if not 0.0 < top_p <= 1.0:
    raise ValueError(f"top_p={top_p!r} must be in (0, 1] (1 turns nucleus sampling off).")


_BLOCK = 128  # vocabulary block of the two-level argmax and draw (see `_blocks`)


def _blocks(x: jax.Array, fill: float) -> jax.Array:
  """`[B, V] -> [B, V / 128, 128]`, padded with `fill` up to a multiple of the block.

  Reductions over the vocabulary are done in two levels, within blocks then across them: on
  CPU, XLA's single-pass variadic argmax over `[16, 49152]` takes ~2 ms and a Gumbel draw
  needs V random numbers (~15 ms); two levels take 0.2 and 0.5 ms, with one random number
  per row.
  """
  b, v = x.shape
  pad = -v % _BLOCK
  if pad:
    x = jnp.concatenate([x, jnp.full((b, pad), fill, x.dtype)], axis=-1)
  return x.reshape(b, -1, _BLOCK)


def _pick_block(blocks: jax.Array, j: jax.Array) -> jax.Array:
  return jnp.take_along_axis(blocks, j[:, None, None], axis=1)[:, 0]


def argmax(x: jax.Array) -> jax.Array:
  """`jnp.argmax(x, -1)` for `[B, V]` (first index of the maximum), in two levels."""
  blocks = _blocks(x.astype(jnp.float32), -jnp.inf)
  j = jnp.argmax(blocks.max(-1), axis=-1)
  return (j * _BLOCK + jnp.argmax(_pick_block(blocks, j), axis=-1)).astype(jnp.int32)


def categorical(key: jax.Array, logp: jax.Array) -> jax.Array:
  """One draw per row from `softmax(logp)`, `logp [B, V]` (`-inf` marks excluded tokens).

  Inverse-CDF sampling with one uniform per row: the first token whose cumulative probability
  reaches `u * total`, found block by block (block sums, then one block's cumulative sums), so
  every sum runs over at most V / 128 or 128 terms. Tokens of probability 0 are never drawn.
  """
  logp = logp.astype(jnp.float32)
  p = _blocks(jnp.exp(logp - logp.max(-1, keepdims=True)), 0.0)  # [B, NB, 128]
  block_cdf = jnp.cumsum(p.sum(-1), axis=-1)  # [B, NB]
  u = (1.0 - jax.random.uniform(key, block_cdf.shape[:1])) * block_cdf[:, -1]  # (0, total]
  last = block_cdf.shape[1] - 1
  j = jnp.minimum(jnp.sum(block_cdf < u[:, None], axis=-1), last)
  before = jnp.where(j > 0, jnp.take_along_axis(block_cdf, jnp.maximum(j - 1, 0)[:, None],
                                                axis=-1)[:, 0], 0.0)
  within = _pick_block(p, j)  # [B, 128]
  reached = (before[:, None] + jnp.cumsum(within, axis=-1) >= u[:, None]) & (within > 0)
  # Rounding can leave u just above the block's last partial sum: take its last positive entry.
  last_positive = _BLOCK - 1 - jnp.argmax(jnp.flip(within > 0, -1), axis=-1)
  i = jnp.where(reached.any(-1), jnp.argmax(reached, axis=-1), last_positive)
  # Clipped so that even NaN logits (a broken model) give an in-vocabulary id.
  return jnp.minimum(j * _BLOCK + i, logp.shape[-1] - 1).astype(jnp.int32)


def _nucleus_threshold(sorted_desc: jax.Array, top_p: float) -> jax.Array:
  """Smallest kept value `[..., 1]` given values sorted in descending order `[..., K]`.

  A value is kept when the probability mass strictly before it (in descending order) is below
  `top_p`; the first one is always kept.
  """
  probs = jax.nn.softmax(sorted_desc, axis=-1)
  mass_before = jnp.cumsum(probs, axis=-1) - probs
  n_keep = jnp.maximum(jnp.sum(mass_before < top_p, axis=-1, keepdims=True), 1)
  return jnp.take_along_axis(sorted_desc, n_keep - 1, axis=-1)


def process_logits(logits: jax.Array, *, temperature: float = 1.0, top_k: int = 0,
                   top_p: float = 1.0) -> jax.Array:
  """Log-probabilities of the sampling distribution over the full vocabulary.

  Args:
    logits: float `[..., V]` raw model logits.
    temperature: divides the logits (> 0).
    top_k: keep only the `top_k` largest (0: off).
    top_p: then keep the nucleus of mass `top_p` (1: off).

  Returns:
    float32 `[..., V]` log-probabilities, `-inf` where a token is cut.
  """
  check_settings(temperature, top_k, top_p)
  x = logits.astype(jnp.float32)
  if temperature != 1.0:
    x = x / temperature
  v = x.shape[-1]
  cut = None
  if 0 < top_k < v:
    top = jax.lax.top_k(x, top_k)[0]  # [..., k] descending
    cut = top[..., -1:]
    if top_p < 1.0:
      cut = _nucleus_threshold(top, top_p)
  elif top_p < 1.0:
    cut = _nucleus_threshold(jnp.flip(jnp.sort(x, axis=-1), axis=-1), top_p)
  if cut is not None:
    x = jnp.where(x >= cut, x, -jnp.inf)
  return jax.nn.log_softmax(x, axis=-1)


def sample_token(key: jax.Array, logits: jax.Array, *, temperature: float = 1.0, top_k: int = 0,
                 top_p: float = 1.0, greedy: bool = False) -> tuple[jax.Array, jax.Array]:
  """Draws one token per row and returns its log-probability under the sampling distribution.

  Args:
    key: PRNG key (unused when `greedy`).
    logits: float `[B, V]`.
    temperature, top_k, top_p: see `process_logits`.
    greedy: take the argmax instead of sampling (the log-prob is still that of the processed
      distribution, whose argmax is the raw argmax).

  Returns:
    tokens int32 `[B]`, log-probs float32 `[B]`.

  With top-k on, work is done on the `k` largest values only (no `[B, V]` mask); top-p alone
  sorts the vocabulary; temperature alone never sorts. Draws use `categorical` (inverse CDF,
  one uniform per row).
  """
  check_settings(temperature, top_k, top_p)
  x = logits.astype(jnp.float32)
  if temperature != 1.0:
    x = x / temperature
  v = x.shape[-1]
  if greedy:
    if 0 < top_k < v or top_p < 1.0:
      logp = process_logits(logits, temperature=temperature, top_k=top_k, top_p=top_p)
    else:
      logp = x - jax.nn.logsumexp(x, axis=-1, keepdims=True)
    tok = argmax(x)
    return tok, jnp.take_along_axis(logp, tok[:, None], axis=-1)[:, 0]
  if 0 < top_k < v:
    vals, idx = jax.lax.top_k(x, top_k)  # [B, k] descending
    if top_p < 1.0:
      vals = jnp.where(vals >= _nucleus_threshold(vals, top_p), vals, -jnp.inf)
    logp = jax.nn.log_softmax(vals, axis=-1)
    choice = categorical(key, logp)
    tok = jnp.take_along_axis(idx, choice[:, None], axis=-1)[:, 0].astype(jnp.int32)
    return tok, jnp.take_along_axis(logp, choice[:, None], axis=-1)[:, 0]
  logp = process_logits(logits, temperature=temperature, top_k=0, top_p=top_p)
  tok = categorical(key, logp)
  return tok, jnp.take_along_axis(logp, tok[:, None], axis=-1)[:, 0]
