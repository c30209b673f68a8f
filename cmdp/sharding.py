"""Device mesh, partition rules and the one helper that builds sharded jitted functions.

Mesh axes (auto axis types):

    data    pure data parallelism: batch rows are split, params replicated.
    fsdp    batch rows are split AND parameters are stored split (ZeRO-3 style).
    tensor  model parallelism: vocab, heads and FFN width are split.

Batches are split over ("data", "fsdp"). Parameter storage follows `PARAM_RULES` (first
regex that matches the '/'-joined path wins). Any dimension that does not divide its mesh
axes (e.g. 9 heads over tensor=4) is replicated instead, and the fallback is logged.
"""
from __future__ import annotations

import logging
import math
import re
from typing import Any, Callable, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from cmdp.models import KVCache, ModelConfig

AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

log = logging.getLogger(__name__)

# (regex over the '/'-joined parameter path, spec). Per-layer weights carry a leading
# [L] axis that is never split.
PARAM_RULES: tuple[tuple[str, P], ...] = (
    (r"embed_tokens/embedding$", P("tensor", "fsdp")),  # [V, D]
    (r"lm_head/kernel$", P("fsdp", "tensor")),  # [D, V]
    (r"self_attn/(q|k|v)_proj/kernel$", P(None, "fsdp", "tensor")),  # [L, D, heads*hd]
    (r"self_attn/(q|k|v)_proj/bias$", P(None, "tensor")),  # [L, heads*hd]
    (r"self_attn/o_proj/kernel$", P(None, "tensor", "fsdp")),  # [L, heads*hd, D]
    (r"mlp/(gate|up)_proj/kernel$", P(None, "fsdp", "tensor")),  # [L, D, F]
    (r"mlp/down_proj/kernel$", P(None, "tensor", "fsdp")),  # [L, F, D]
    (r"(norm|layernorm)/scale$", P()),  # [L, D], [L, hd] or [D]
)


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A ("data", "fsdp", "tensor") mesh over `devices` (default: all). One size may be -1."""
  devices = list(jax.devices() if devices is None else devices)
  sizes = [data, fsdp, tensor]
  if sum(s == -1 for s in sizes) > 1 or any(s == 0 or s < -1 for s in sizes):
    raise ValueError(f"make_mesh(data={data}, fsdp={fsdp}, tensor={tensor}): sizes must be "
                     ">= 1, with at most one -1 ('the rest').")
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if len(devices) % known:
      raise ValueError(f"{len(devices)} devices do not split into data={data}, fsdp={fsdp}, "
                       f"tensor={tensor}: the fixed sizes must divide the device count.")
    sizes[sizes.index(-1)] = len(devices) // known
  if math.prod(sizes) != len(devices):
    raise ValueError(f"mesh data*fsdp*tensor={sizes} uses {math.prod(sizes)} devices but "
                     f"{len(devices)} are given; make the product match or pass `devices`.")
  return Mesh(np.array(devices).reshape(sizes), AXES)


def _axis_size(mesh: Mesh, axes) -> int:
  if axes is None:
    return 1
  axes = (axes,) if isinstance(axes, str) else axes
  return math.prod(mesh.shape[a] for a in axes)


def fit_spec(spec: P, shape: Sequence[int], mesh: Mesh, what: str = "array",
             units: Sequence[int] | None = None) -> P:
  """`spec` with every dimension that does not divide its mesh axes replaced by None.

  Args:
    spec: the wanted PartitionSpec (may be shorter than `shape`).
    shape: the array's shape.
    mesh: the mesh.
    what: a name for the log line.
    units: optional per-dimension count of indivisible units (e.g. heads of a q kernel); the
      dimension is split only when this count divides too.
  """
  entries = list(spec) + [None] * (len(shape) - len(spec))
  if len(entries) > len(shape):
    raise ValueError(f"{what}: spec {spec} has more entries than shape {tuple(shape)} has dims.")
  out = []
  for dim, axes in enumerate(entries):
    n = _axis_size(mesh, axes)
    count = shape[dim] if units is None or units[dim] is None else units[dim]
    if n > 1 and (shape[dim] % n or count % n):
      log.info("%s: dim %d (size %d, %d units) does not divide mesh axes %s (%d); replicated.",
               what, dim, shape[dim], count, axes, n)
      axes = None
    out.append(axes)
  return P(*out)


def _path_str(path) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def _head_units(path: str, ndim: int, config: ModelConfig | None):
  """Heads per dimension for attention weights (so a head is never split), else None."""
  if config is None:
    return None
  m = re.search(r"self_attn/(q|k|v|o)_proj/(kernel|bias)$", path)
  if not m:
    return None
  heads = config.num_heads if m.group(1) in ("q", "o") else config.num_kv_heads
  units = [None] * ndim
  head_dim = 1 if (m.group(1) == "o" and m.group(2) == "kernel") else ndim - 1
  units[head_dim] = heads
  return units


def param_specs(params: Any, mesh: Mesh, config: ModelConfig | None = None,
                rules: Sequence[tuple[str, P]] = PARAM_RULES) -> Any:
  """PartitionSpec per parameter (same tree as `params`; arrays or ShapeDtypeStructs).

  Args:
    params: the parameter tree (see `cmdp.models.transformer`).
    mesh: the mesh whose axis sizes decide the divisibility fallback.
    config: optional model config; when given, attention projections are split over
      "tensor" only if the head count divides it (a head is never cut in two).
    rules: (regex, spec) pairs; the first regex found in the path wins.

  Raises:
    ValueError naming the parameter path when no rule matches.
  """
  def spec_for(path, leaf):
    name = _path_str(path)
    for pattern, spec in rules:
      if re.search(pattern, name):
        return fit_spec(spec, leaf.shape, mesh, name, _head_units(name, len(leaf.shape), config))
    raise ValueError(f"No partition rule matches parameter {name!r} (shape {leaf.shape}); add "
                     "a (regex, PartitionSpec) pair to `rules`.")
  return jax.tree_util.tree_map_with_path(spec_for, params)


def batch_spec() -> P:
  """Spec for `[B, ...]` arrays: rows split over ("data", "fsdp"), the rest replicated."""
  return P(BATCH_AXES)


def rows_spec(rows: int, mesh: Mesh) -> P:
  """Spec for a `[rows, ...]` array that may not split over the batch axes (a microbatch,
  un-repeated prompts): `batch_spec()` when `rows` divides data*fsdp, else replicated."""
  return batch_spec() if rows % _axis_size(mesh, BATCH_AXES) == 0 else P()


def cache_specs(cache: KVCache, mesh: Mesh) -> KVCache:
  """Specs for a `cmdp.models.KVCache`: batch over ("data", "fsdp"), kv heads over "tensor"
  (each where divisible).

  k, v: one `[B, KVH, ...]` buffer per layer; mask `[B, S]`; index `[]`; pos `[B]`.
  """
  kv = tuple(fit_spec(P(BATCH_AXES, "tensor"), x.shape, mesh, "cache.k") for x in cache.k)
  return KVCache(k=kv, v=kv,
                 mask=fit_spec(P(BATCH_AXES, None), cache.mask.shape, mesh, "cache.mask"),
                 index=P(), pos=fit_spec(P(BATCH_AXES), cache.pos.shape, mesh, "cache.pos"))


def named(mesh: Mesh, specs: Any) -> Any:
  """Maps a pytree of PartitionSpecs to NamedShardings on `mesh`."""
  return jax.tree.map(lambda s: NamedSharding(mesh, s), specs,
                      is_leaf=lambda x: isinstance(x, P))


def shard_params(params: Any, mesh: Mesh, config: ModelConfig | None = None) -> Any:
  """Places `params` on `mesh` following `param_specs`."""
  return jax.device_put(params, named(mesh, param_specs(params, mesh, config)))


def jit_sharded(fn: Callable, mesh: Mesh, in_specs: Any, out_specs: Any,
                static_argnums: int | Sequence[int] = (),
                donate_argnums: int | Sequence[int] = ()) -> Callable:
  """`jax.jit(fn)` with NamedShardings built from PartitionSpec pytrees.

  Args:
    fn: the function.
    mesh: the mesh.
    in_specs: a tuple with one spec pytree per NON-static positional argument.
    out_specs: a spec pytree matching the output.
    static_argnums, donate_argnums: passed to `jax.jit`.

  The single place where train and sample steps get their compile signature.
  """
  return jax.jit(fn, in_shardings=named(mesh, tuple(in_specs)),
                 out_shardings=named(mesh, out_specs), static_argnums=static_argnums,
                 donate_argnums=donate_argnums)
