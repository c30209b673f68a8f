"""Repairs a student cut from its teacher's layers without training: layer-wise least squares.

A student made of some of the teacher's layers (`keep`) is broken where layers are missing:
the layer after a gap reads a residual stream it was never trained on, and every later
layer inherits the error. `refit_cut` re-fits, in order, the `mlp.down_proj` weights of
every student layer from the first gap on, so that the student's residual stream after its
layer j matches the teacher's at the same point: after teacher layer `keep[j + 1] - 1`
(the input of the next kept layer), or after the teacher's last layer for the student's
last. Each fit is a ridge regression of (target - the layer's residual after attention) on
the layer's MLP hidden activations `silu(gate) * up`, computed on the student's stream as
the earlier fits left it, over the real tokens of the given sequences (teacher samples).
Tokens are weighted by 1 / ||target||, so each counts by its relative error (the next
layer's RMSNorm reads the stream's direction, and a few tokens carry streams hundreds of
times longer than the rest), and the ridge pulls towards the layer's own weights:

    W' = argmin_W  sum_t ||z_t W - (y_t - a_t)||^2 / ||y_t||^2  +  lam ||W - W_0||^2,
    lam = ridge * trace(G) / F,   G = sum_t z_t z_t^T / ||y_t||^2   (F = intermediate size)

Nothing else changes: the student keeps the teacher's embeddings, norms, attention and the
other MLP weights, and its shapes. It is the same layer-wise reconstruction that pruning and
post-training quantisation methods fit, here to bridge dropped layers. On SmolLM2-135M with
layers 12-21 dropped and 256 teacher samples it brings the per-sequence KL(student ||
teacher) on held-out problems from 39 nats to about 2 (README, "The main job").

The statistics are sums over tokens of jax arrays, so sequences sharded over a mesh (or
spread over processes as one global array) give the fit of the whole batch; the solve
(F x F) runs on the host in float64.
"""
from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from cmdp.models.config import ModelConfig
from cmdp.models.transformer import Block, token_positions


class LayerFit(NamedTuple):
  """One re-fitted student layer; errors are the weighted relative residual errors
  `sqrt(sum_t ||z_t W - (y_t - a_t)||^2 / ||y_t||^2 / sum_t ||y_t - a_t||^2 / ||y_t||^2)`
  of the layer's own fit, with the cut's weights (before) and the fitted ones (after)."""
  layer: int  # student layer
  teacher_layer: int  # the teacher layer it was cut from
  target_layer: int  # the teacher layer whose output it is fitted to
  error_before: float
  error_after: float


def cut(params: dict, keep: tuple[int, ...]) -> dict:
  """The parameters of the teacher's layers `keep` (in order), the rest shared; fresh arrays,
  never aliases of the teacher's (a train step donates the student)."""
  idx = jnp.asarray(keep)
  out = {k: jax.tree.map(jnp.array, v) for k, v in params.items() if k != "layers"}
  out["layers"] = jax.tree.map(lambda w: w[idx], params["layers"])
  return out


def refit_cut(config: ModelConfig, teacher_params: dict, keep: tuple[int, ...],
              tokens: jax.Array, attention_mask: jax.Array, *, shared_prefix: int = 0,
              ridge: float = 1e-3, batch_size: int = 64) -> tuple[dict, list[LayerFit]]:
  """The student of the teacher's layers `keep`, with its down_proj weights re-fitted from
  the first gap on (module docstring); returns `(student params, fits)`.

  Args:
    config: the teacher's config (the fit runs in float32 whatever its dtype).
    teacher_params: the teacher's parameter tree.
    keep: the teacher layers the student keeps, increasing.
    tokens, attention_mask: `[B, T]` sequences the fit runs on (teacher samples of the
      task's prompts), laid out as for `forward`; every real token counts.
    shared_prefix: a static count S of leading columns that are the same real tokens in
      every row (`forward`'s `shared_prefix`): they run once and count once in the fit.
    ridge: the ridge's weight relative to the mean diagonal of the Gram matrix.
    batch_size: rows per forward pass (the sums add up over passes; memory, not numbers).
  """
  n = config.num_layers
  keep = tuple(int(k) for k in keep)
  if not keep or list(keep) != sorted(set(keep)) or keep[0] < 0 or keep[-1] >= n:
    raise ValueError(f"refit_cut: keep={keep} must be increasing teacher layers in [0, {n}).")
  if ridge <= 0:
    raise ValueError(f"refit_cut: ridge={ridge} must be > 0.")
  s = int(shared_prefix)
  if not 0 <= s < tokens.shape[1]:
    raise ValueError(f"refit_cut: shared_prefix={s} must leave at least one of the "
                     f"{tokens.shape[1]} columns.")
  fn = _layer_fn(config.replace(dtype="float32", remat=False))
  mask = jnp.asarray(attention_mask).astype(bool)
  tokens = jnp.asarray(tokens)
  rows = max(int(batch_size), 1)
  # One stream per pass of `rows` rows; the shared prefix counts in the first pass only.
  teacher = [_Stream.embed(teacher_params, tokens[i:i + rows], mask[i:i + rows], s, i == 0)
             for i in range(0, tokens.shape[0], rows)]
  student = teacher  # the same until the first gap
  apply = lambda streams, layer: [x.apply(fn, layer) for x in streams]
  down = np.array(jax.device_get(teacher_params["layers"]["mlp"]["down_proj"]["kernel"]))
  kernels = [down[k] for k in keep]
  fits = []
  done = 0  # teacher layers the teacher's stream has been through
  for j, k in enumerate(keep):
    nxt = keep[j + 1] if j + 1 < len(keep) else n
    aligned = student is teacher and k == done
    for i in range(done, nxt):  # the teacher up to the input of its next kept layer
      teacher = [out for out, _, _ in apply(teacher, _layer(teacher_params, i))]
    done = nxt
    if aligned and nxt == k + 1:  # no gap yet: the student's layer is the teacher's
      student = teacher
      continue
    layer = _layer(teacher_params, k)
    passes = apply(student, layer)
    gram, cross, total = map(sum, zip(*(
        _statistics(hidden, attn_residual, target)
        for (_, attn_residual, hidden), target in zip(passes, teacher))))
    w0 = kernels[j].astype(np.float64)
    lam = ridge * np.trace(gram) / gram.shape[0]
    w = np.linalg.solve(gram + lam * np.eye(gram.shape[0]), cross + lam * w0)
    err = lambda m: float(np.sqrt(max(np.sum(m * (gram @ m)) - 2 * np.sum(m * cross) + total,
                                      0.0) / total))
    fits.append(LayerFit(j, k, nxt - 1, err(w0), err(w)))
    kernels[j] = w.astype(np.float32)
    # The layer's output with the fitted kernel, from the pass above: the residual after
    # attention plus the MLP's hidden activations through it (no second pass).
    student = [a.plus_product(z, kernels[j]) for _, a, z in passes]
  params = cut(teacher_params, keep)
  params["layers"]["mlp"]["down_proj"]["kernel"] = jnp.asarray(np.stack(kernels))
  return params, fits


def _layer(params: dict, i: int) -> dict:
  """Layer i's parameters as a mutable nested dict (one compiled take for every layer)."""
  def copy(tree):
    return {k: copy(v) if isinstance(v, Mapping) else v for k, v in tree.items()}
  return copy(_take_layer(params["layers"], i))


@jax.jit
def _take_layer(layers, i):
  return jax.tree.map(lambda v: jax.lax.dynamic_index_in_dim(v, i, keepdims=False), layers)


@functools.lru_cache(maxsize=8)
def _layer_fn(config: ModelConfig):
  """One layer: `(out, own kv, residual after attention, MLP hidden)`, compiled once."""
  def run(p, x, positions, mask, prefix):
    # The shared prefix's `(k, v)` (`[1, S, KVH, hd]`, every token real) as Block's one level.
    levels = () if prefix is None else ((prefix,), (jnp.ones(prefix[0].shape[:2], bool),))
    (out, kv), variables = Block(config, return_kv=True).apply(
        {"params": p}, x, positions, mask, *levels, mutable=["intermediates"])
    inter = variables["intermediates"]
    return out, kv, inter["attn_residual"][0], inter["mlp"]["hidden"][0]
  return jax.jit(run)


class _Stream(NamedTuple):
  """A residual stream `[B, T - S, D]` of the rows, after the shared prefix's `[1, S, D]`
  (None when S = 0), with what applying a layer needs."""
  head: jax.Array | None
  rows: jax.Array
  mask: jax.Array  # [B, T - S] real tokens of the rows
  positions: jax.Array  # [B, T - S]
  count_head: bool  # whether the fit counts the prefix's tokens from this stream

  @staticmethod
  def embed(params, tokens, mask, s, count_head) -> "_Stream":
    head, rows, rows_mask, positions = _embed(params["embed_tokens"]["embedding"], tokens,
                                              mask, s)
    return _Stream(head, rows, rows_mask, positions, bool(s) and count_head)

  def apply(self, fn, layer) -> tuple["_Stream", "_Stream", "_Stream"]:
    """This stream after `layer`, and the layer's residual after attention and MLP hidden
    activations, each as a stream (same tokens)."""
    if self.head is None:
      out, _, a, z = fn(layer, self.rows, self.positions, self.mask, None)
      return self._replace(rows=out), self._replace(rows=a), self._replace(rows=z)
    s = self.head.shape[1]
    h_out, kv, h_a, h_z = fn(layer, self.head, jnp.arange(s)[None], jnp.ones((1, s), bool),
                             None)
    kv = tuple(t.astype(jnp.float32) for t in kv)
    out, _, a, z = fn(layer, self.rows, self.positions, self.mask, kv)
    return (self._replace(head=h_out, rows=out), self._replace(head=h_a, rows=a),
            self._replace(head=h_z, rows=z))

  def plus_product(self, hidden: "_Stream", kernel) -> "_Stream":
    """This stream plus `hidden @ kernel` (`[F, D]`), token by token: a layer's output from
    its residual after attention and its MLP's hidden activations."""
    kernel = jnp.asarray(kernel)
    head = None if self.head is None else _add_product(self.head, hidden.head, kernel)
    return self._replace(head=head, rows=_add_product(self.rows, hidden.rows, kernel))

  def parts(self):
    """`(head, rows)` arrays with their token weights (1 on real tokens, else 0)."""
    rows = (self.rows, self.mask.astype(jnp.float32))
    if self.head is None or not self.count_head:
      return (rows,)
    return ((self.head, jnp.ones(self.head.shape[:2], jnp.float32)), rows)


def _statistics(hidden: _Stream, attn_residual: _Stream, target: _Stream):
  """Host float64 `(G [F, F], C [F, D], sum_t ||y_t - a_t||^2 w_t^2)` with
  w_t = 1 / ||y_t|| on real tokens (the prefix counted once)."""
  gram = cross = total = 0.0
  for (z, m), (a, _), (y, _) in zip(hidden.parts(), attn_residual.parts(), target.parts()):
    g, c, t = _sums(z, a, y, m)
    gram, cross, total = gram + g, cross + c, total + t
  return tuple(np.asarray(jax.device_get(v), np.float64) for v in (gram, cross, total))


@jax.jit
def _sums(z, a, y, m):
  w = m / jnp.maximum(jnp.linalg.norm(y, axis=-1), 1e-6)
  zw, rw = z * w[..., None], (y - a) * w[..., None]
  hi = jax.lax.Precision.HIGHEST
  return (jnp.einsum("btf,btg->fg", zw, zw, precision=hi),
          jnp.einsum("btf,btd->fd", zw, rw, precision=hi), jnp.sum(rw * rw))


@jax.jit
def _add_product(a, z, kernel):
  return a + jnp.einsum("btf,fd->btd", z, kernel)


@functools.partial(jax.jit, static_argnums=3)
def _embed(table, tokens, mask, s: int):
  """`(prefix [1, S, D] or None, rows [B, T - S, D], their mask, their positions)`."""
  x = table[tokens].astype(jnp.float32)
  if not s:
    return None, x, mask, token_positions(mask)
  rows_mask = mask[:, s:]
  return x[:1, :s], x[:, s:], rows_mask, token_positions(rows_mask, s)
