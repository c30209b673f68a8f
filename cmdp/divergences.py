"""Per-token divergences between two next-token distributions given as logits.

Every function takes logits `[..., V]` (vocabulary on the last axis, any float dtype) and
returns float32 `[...]`: one value per position, exact over the vocabulary. Work is done in
float32 from log-softmax, so bfloat16 inputs, huge logits and masked entries (`-inf` or
`-1e9`) are safe: a token with zero probability under the first argument contributes 0, also
to the gradient.

Direction is always in the name: `kl(p||q) = sum_v p_v log(p_v / q_v)`. In distillation
"forward" is `kl(teacher||student)` and "reverse" is `kl(student||teacher)`.

Memory: with `chunk_size=c`, positions are processed `c` at a time along the time axis
(axis -2 of the logits, the last leading axis) by `lax.map`, each chunk under
`jax.checkpoint`, so only `c x (other leading dims) x V` float32 temporaries live at once,
forward and backward. The values and gradients equal the unchunked ones, and the batch axes
stay whole inside every chunk, so data-parallel sharding is untouched. `chunk_size=None`
(default) computes everything in one pass; pass a chunk size for large vocabularies
(e.g. 150k tokens x long responses). Measured on XLA:CPU (benchmarks/reward.py): the
gradient's temporaries shrink to one chunk; with bfloat16 inputs the CPU compiler hoists the
float32 upcast of the whole input out of the loop in the forward-only pass, so there the
forward temporaries stay near the unchunked size (float32 inputs chunk fully).
"""
from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp


def _map_time_chunks(fn: Callable[..., jax.Array], *arrays: jax.Array,
                     chunk_size: int | None) -> jax.Array:
  """`fn(*arrays)`, computed `chunk_size` positions at a time along the time axis.

  `arrays[0]` is `[..., T, V]` and sets the leading shape; the others share its leading
  axes (e.g. targets `[..., T]`). `fn` reduces the last axis of its first argument and
  must treat leading positions independently.
  """
  if not chunk_size:  # None or 0: unchunked
    return fn(*arrays)
  if not isinstance(chunk_size, int) or chunk_size < 0:
    raise ValueError(f"chunk_size must be a positive int, or 0 / None for unchunked; got "
                     f"{chunk_size!r}.")
  axis = arrays[0].ndim - 2  # time: the last leading axis
  length = arrays[0].shape[axis] if axis >= 0 else 0
  if chunk_size >= length:
    return fn(*arrays)
  n = length // chunk_size

  def one_chunk(start):  # slices in place: no transposed copy of the logits
    return fn(*(jax.lax.dynamic_slice_in_dim(a, start, chunk_size, axis) for a in arrays))

  out = jax.lax.map(jax.checkpoint(one_chunk), jnp.arange(n) * chunk_size)
  out = jnp.moveaxis(out, 0, axis)  # [..., n, chunk, ...]
  out = out.reshape(out.shape[:axis] + (n * chunk_size,) + out.shape[axis + 2:])
  if n * chunk_size < length:
    tail = fn(*(jax.lax.slice_in_dim(a, n * chunk_size, length, axis=axis) for a in arrays))
    out = jnp.concatenate([out, tail], axis)
  return out


def _log_probs(logits: jax.Array) -> jax.Array:
  return jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)


def _expect(logp: jax.Array, values: jax.Array) -> jax.Array:
  """`sum_v p_v * values_v` over the last axis, with 0 wherever `p_v == 0`.

  The double `where` keeps `0 * inf` (and its gradient) out of the sum.
  """
  support = logp > -jnp.inf
  values = jnp.where(support, values, 0.0)
  return jnp.sum(jnp.where(support, jnp.exp(logp), 0.0) * values, axis=-1)


def _log_ratio_to_mixture(logp: jax.Array, logq: jax.Array, w: float) -> jax.Array:
  """`log(p / m)` with `m = w p + (1 - w) q`, elementwise, for a static `w` in [0, 1].

  Written as `-logaddexp(log w, log(1 - w) + log q - log p)`, which stays accurate when `m`
  is close to `p` (the small-`1 - w` regime of `gkd_divergence`), where the naive
  `log p - log m` would cancel.
  """
  log_w = math.log(w) if w > 0 else -math.inf
  log_1mw = math.log1p(-w) if w < 1 else -math.inf
  d = jnp.where(logp > -jnp.inf, logq - logp, 0.0)  # no inf - inf
  return -jnp.logaddexp(log_w, log_1mw + d)


def _check_weight(name: str, value: float) -> float:
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
    raise ValueError(f"{name} must be a static Python float in [0, 1], got {value!r}.")
  return float(value)


def kl(p_logits: jax.Array, q_logits: jax.Array, *, chunk_size: int | None = None) -> jax.Array:
  """`kl(p||q) = sum_v p_v log(p_v / q_v)` per position.

  Args:
    p_logits: `[..., V]` logits of p (the distribution the expectation is under).
    q_logits: `[..., V]` logits of q.
    chunk_size: positions per chunk along axis -2 (see module docstring); 0 or None = unchunked.

  Returns:
    float32 `[...]`, >= 0; `+inf` where q gives zero probability to a token p can emit.
  """
  def fn(p, q):
    logp, logq = _log_probs(p), _log_probs(q)
    return _expect(logp, logp - logq)
  return _map_time_chunks(fn, p_logits, q_logits, chunk_size=chunk_size)


def skew_kl(p_logits: jax.Array, q_logits: jax.Array, alpha: float, *,
            chunk_size: int | None = None) -> jax.Array:
  """Skew forward KL `kl(p || alpha p + (1 - alpha) q)` per position, float32 `[...]`.

  `alpha = 0` is `kl(p||q)`; `alpha = 1` is 0. Bounded by `-log(alpha)`.
  `alpha` must be a static Python float in [0, 1].
  """
  alpha = _check_weight("alpha", alpha)
  def fn(p, q):
    logp, logq = _log_probs(p), _log_probs(q)
    return _expect(logp, _log_ratio_to_mixture(logp, logq, alpha))
  return _map_time_chunks(fn, p_logits, q_logits, chunk_size=chunk_size)


def generalized_jsd(p_logits: jax.Array, q_logits: jax.Array, beta: float, *,
                    chunk_size: int | None = None) -> jax.Array:
  """Generalized Jensen-Shannon divergence per position, float32 `[...]`.

  `beta * kl(p||m) + (1 - beta) * kl(q||m)` with the mixture `m = beta p + (1 - beta) q`.
  Symmetric under `(p, q, beta) -> (q, p, 1 - beta)`, 0 at `beta` in {0, 1}, and bounded by
  the binary entropy `-beta log beta - (1 - beta) log(1 - beta)` (reached for disjoint
  supports). `beta` must be a static Python float in [0, 1].
  """
  beta = _check_weight("beta", beta)
  def fn(p, q):
    logp, logq = _log_probs(p), _log_probs(q)
    out = jnp.zeros(logp.shape[:-1], jnp.float32)
    if beta > 0:
      out += beta * _expect(logp, _log_ratio_to_mixture(logp, logq, beta))
    if beta < 1:
      out += (1 - beta) * _expect(logq, _log_ratio_to_mixture(logq, logp, 1 - beta))
    return out
  return _map_time_chunks(fn, p_logits, q_logits, chunk_size=chunk_size)


def gkd_divergence(teacher_logits: jax.Array, student_logits: jax.Array, beta: float, *,
                   chunk_size: int | None = None) -> jax.Array:
  """The GKD divergence between teacher and student per position, float32 `[...]`.

  * `beta = 0`: forward `kl(teacher||student)`.
  * `beta = 1`: reverse `kl(student||teacher)`.
  * otherwise `generalized_jsd(teacher, student, beta) / (beta * (1 - beta))`, i.e. with the
    mixture `m = beta * teacher + (1 - beta) * student`.

  Our choice: the division by `beta * (1 - beta)` makes the family continuous at both ends
  (as `beta -> 0` the JSD is `beta * kl(teacher||student) + O(beta^2)`, and symmetrically at
  1), so `beta` interpolates between forward and reverse KL. The unnormalised JSD of the
  GKD paper differs from this only by that constant factor for `0 < beta < 1`.
  `beta` must be a static Python float in [0, 1].
  """
  beta = _check_weight("beta", beta)
  if beta == 0:
    return kl(teacher_logits, student_logits, chunk_size=chunk_size)
  if beta == 1:
    return kl(student_logits, teacher_logits, chunk_size=chunk_size)
  jsd = generalized_jsd(teacher_logits, student_logits, beta, chunk_size=chunk_size)
  return jsd / (beta * (1 - beta))


def total_variation(p_logits: jax.Array, q_logits: jax.Array, *,
                    chunk_size: int | None = None) -> jax.Array:
  """Total variation `0.5 * sum_v |p_v - q_v|` per position (symmetric), float32 in [0, 1]."""
  def fn(p, q):
    return 0.5 * jnp.sum(jnp.abs(jnp.exp(_log_probs(p)) - jnp.exp(_log_probs(q))), axis=-1)
  return _map_time_chunks(fn, p_logits, q_logits, chunk_size=chunk_size)


def entropy(logits: jax.Array, *, chunk_size: int | None = None) -> jax.Array:
  """Entropy `-sum_v p_v log p_v` per position (nats), float32 `[...]`."""
  def fn(x):
    logp = _log_probs(x)
    return -_expect(logp, logp)
  return _map_time_chunks(fn, logits, chunk_size=chunk_size)


def token_logprobs(logits: jax.Array, targets: jax.Array, *,
                   chunk_size: int | None = None) -> jax.Array:
  """`log softmax(logits)[targets]`: float32 `[...]` from logits `[..., V]`, int targets `[...]`."""
  def fn(x, y):
    x = x.astype(jnp.float32)
    picked = jnp.take_along_axis(x, y[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return picked - jax.nn.logsumexp(x, axis=-1)
  return _map_time_chunks(fn, logits, targets, chunk_size=chunk_size)


def logratio(logp: jax.Array, logq: jax.Array) -> jax.Array:
  """One-sample estimate of `kl(p||q)` at a token `y ~ p`: `log p(y) - log q(y)`.

  Unbiased, can be negative. Inputs are the sampled token's log-probs under p (the sampler)
  and q, any matching shape.
  """
  return logp.astype(jnp.float32) - logq.astype(jnp.float32)


def k3(logp: jax.Array, logq: jax.Array) -> jax.Array:
  """One-sample estimate of `kl(p||q)` at `y ~ p`: `q/p - 1 - log(q/p)` ("k3", Schulman).

  Unbiased (since `E_p[q/p] = 1`) and never negative. Same inputs as `logratio`.
  """
  r = logq.astype(jnp.float32) - logp.astype(jnp.float32)
  return jnp.expm1(r) - r
