"""The parameter layout, the mesh and the one helper that builds sharded jitted functions.

The mesh's axes (data, fsdp, tensor), the logical names of array dimensions with their rules
(`LOGICAL_AXIS_RULES`) and the activation constraints (`constrain` under `activation_mesh`,
`on_mesh`) are `cmdp.mesh_axes`'s, which the models import; this module sits below the
models and re-exports them, so `sharding.constrain` and the rest still name them. The KV
cache's specs (`cache_specs`) live beside the cache, in `cmdp.models.decode`.

Parameter storage follows `PARAM_AXES` (first regex that matches the '/'-joined path wins):
parameters' model width ("embed") over fsdp, heads / MLP width / vocabulary over tensor;
activations' batch is split over ("data", "fsdp"). `jit_sharded` and the trainer's programs
trace under `activation_mesh(mesh)`, so the model's activation constraints apply.
So fsdp is data parallelism with sharded weights: no device computes another's rows.
Any dimension that does not divide its mesh axes (e.g. 9 heads over tensor=4) is replicated
instead; a KV cache whose heads do not divide tensor splits head_dim instead.
"""
from __future__ import annotations

import functools
import logging
import math
import re
from typing import Any, Callable, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

# Re-exported with the names this module defines: the activation side of the layout (which
# the models import from cmdp.mesh_axes) and the KV cache's specs (beside the cache).
from cmdp.mesh_axes import (AXES, BATCH_AXES, LOGICAL_AXIS_RULES, activation_mesh, axis_size,
                            constrain, fit_spec, logical_spec, on_mesh, rows_per_shard,
                            traced_mesh)
from cmdp.models.config import ModelConfig
from cmdp.models.decode import cache_specs
from cmdp.models.transformer import cast_params

log = logging.getLogger(__name__)

# (regex over the '/'-joined parameter path, logical names of its dims).
PARAM_AXES: tuple[tuple[str, tuple], ...] = (
    (r"embed_tokens/embedding$", ("vocab", "embed")),  # [V, D]
    (r"lm_head/kernel$", ("embed", "vocab")),  # [D, V]
    (r"self_attn/q_proj/kernel$", ("layers", "embed", "heads")),  # [L, D, H*hd]
    (r"self_attn/(k|v)_proj/kernel$", ("layers", "embed", "kv_heads")),  # [L, D, KVH*hd]
    (r"self_attn/q_proj/bias$", ("layers", "heads")),
    (r"self_attn/(k|v)_proj/bias$", ("layers", "kv_heads")),
    (r"self_attn/o_proj/kernel$", ("layers", "heads", "embed")),  # [L, H*hd, D]
    (r"mlp/(gate|up)_proj/kernel$", ("layers", "embed", "mlp")),  # [L, D, F]
    (r"mlp/down_proj/kernel$", ("layers", "mlp", "embed")),  # [L, F, D]
    (r"(norm|layernorm)/scale$", ()),  # [L, D], [L, hd] or [D]
)


# The same rules as (regex, PartitionSpec) pairs, the form `param_specs` takes.
PARAM_RULES: tuple[tuple[str, P], ...] = tuple(
    (pattern, logical_spec(names)) for pattern, names in PARAM_AXES)

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
        return fit_spec(spec, leaf.shape, mesh, name, _head_units(name, len(leaf.shape), config),
                        log)
    raise ValueError(f"No partition rule matches parameter {name!r} (shape {leaf.shape}); add "
                     "a (regex, PartitionSpec) pair to `rules`.")
  return jax.tree_util.tree_map_with_path(spec_for, params)


def batch_spec() -> P:
  """Spec for `[B, ...]` arrays: rows split over ("data", "fsdp"), the rest replicated."""
  return P(BATCH_AXES)


def rows_spec(rows: int, mesh: Mesh) -> P:
  """Spec for a `[rows, ...]` array that may not split over the batch axes (a microbatch,
  un-repeated prompts): `batch_spec()` when `rows` divides data*fsdp, else replicated."""
  return batch_spec() if rows % axis_size(mesh, BATCH_AXES) == 0 else P()


def named(mesh: Mesh, specs: Any) -> Any:
  """Maps a pytree of PartitionSpecs to NamedShardings on `mesh`."""
  return jax.tree.map(lambda s: NamedSharding(mesh, s), specs,
                      is_leaf=lambda x: isinstance(x, P))


def shard_params(params: Any, mesh: Mesh, config: ModelConfig | None = None) -> Any:
  """Places `params` on `mesh` following `param_specs`, stored in `config.param_dtype`
  (cast after placement, shard by shard: no device holds a whole float32 copy)."""
  shardings = named(mesh, param_specs(params, mesh, config))
  placed = jax.device_put(params, shardings)
  if config is None or all(x.dtype == config.param_dtype for x in jax.tree.leaves(placed)):
    return placed
  return jax.jit(functools.partial(cast_params, dtype=config.param_dtype),
                 out_shardings=shardings)(placed)


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

  The single place where train and sample steps get their compile signature. `fn` is
  traced under `activation_mesh(mesh)`, so the model's activation constraints apply.
  """
  return jax.jit(on_mesh(fn, mesh), in_shardings=named(mesh, tuple(in_specs)),
                 out_shardings=named(mesh, out_specs), static_argnums=static_argnums,
                 donate_argnums=donate_argnums)
