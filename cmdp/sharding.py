"""Device mesh, logical axis rules and the one helper that builds sharded jitted functions.

Mesh axes (auto axis types):

    data    pure data parallelism: batch rows are split, params replicated.
    fsdp    batch rows are split AND parameters, optimiser state and gradients are stored
            split (ZeRO-3: each layer's weights are all-gathered where they are used, the
            gradients reduce-scattered).
    tensor  model parallelism: vocab, heads and FFN width are split.

Every dimension of a parameter or an activation has a logical name, and `LOGICAL_AXIS_RULES`
maps names to mesh axes (MaxText's `logical_axis_rules`): parameters' model width ("embed")
over fsdp, activations' batch over ("data", "fsdp"), heads / MLP width / vocabulary over
tensor. Parameter storage follows `PARAM_AXES` (first regex that matches the '/'-joined
path wins); activations are pinned by `constrain(x, *names)` inside the model, the decode
loop and the step, which acts only while a function is traced under `activation_mesh(mesh)`
(`jit_sharded` and the trainer's programs trace under it; off a mesh it is the identity).
So fsdp is data parallelism with sharded weights: no device computes another's rows.
Any dimension that does not divide its mesh axes (e.g. 9 heads over tensor=4) is replicated
instead; a KV cache whose heads do not divide tensor splits head_dim instead.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import logging
import math
import re
from typing import TYPE_CHECKING, Any, Callable, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from cmdp.models.config import ModelConfig

if TYPE_CHECKING:  # cmdp.models imports this module (its activation constraints)
  from cmdp.models.decode import KVCache

AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

log = logging.getLogger(__name__)

# Logical name -> mesh axes (None: never split). Parameter dims and activation dims have
# different names, so the weights' model width can be stored over fsdp while the
# activations' stays whole (their batch is what fsdp splits).
LOGICAL_AXIS_RULES: tuple[tuple[str, Any], ...] = (
    # parameters
    ("layers", None),  # the stacked [L] axis of nn.scan
    ("embed", "fsdp"),  # model width d of a weight
    ("vocab", "tensor"),
    ("heads", "tensor"),  # q / o projections' heads * head_dim
    ("kv_heads", "tensor"),  # k / v projections' kv_heads * head_dim
    ("mlp", "tensor"),  # SwiGLU width
    ("norm", None),  # norm scales: small, replicated
    # activations
    ("activation_batch", BATCH_AXES),
    ("activation_length", None),
    ("activation_embed", None),
    ("activation_heads", "tensor"),
    ("activation_kv_heads", "tensor"),
    ("activation_head_dim", None),
    ("activation_mlp", "tensor"),
    ("activation_vocab", "tensor"),
    # the decode cache [B, KVH, S, hd]: heads over tensor, or (heads not dividing it)
    # head_dim over tensor, see `cache_specs`
    ("cache_kv_heads", "tensor"),
    ("cache_head_dim", "tensor"),
    ("cache_length", None),
)

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


def logical_spec(names: Sequence[str | None],
                 rules: Sequence[tuple[str, Any]] = LOGICAL_AXIS_RULES) -> P:
  """The PartitionSpec of dims with these logical names (None: a dim never split)."""
  table = dict(rules)
  unknown = [n for n in names if n is not None and n not in table]
  if unknown:
    raise ValueError(f"logical axis names {unknown} have no rule in {sorted(table)}.")
  return P(*(None if n is None else table[n] for n in names))


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


def _axis_size(mesh: Mesh, axes) -> int:
  if axes is None:
    return 1
  axes = (axes,) if isinstance(axes, str) else axes
  return math.prod(mesh.shape[a] for a in axes)


def fit_spec(spec: P, shape: Sequence[int], mesh: Mesh, what: str = "array",
             units: Sequence[int] | None = None, quiet: bool = False) -> P:
  """`spec` with every dimension that does not divide its mesh axes replaced by None.

  Args:
    spec: the wanted PartitionSpec (may be shorter than `shape`).
    shape: the array's shape.
    mesh: the mesh.
    what: a name for the log line.
    units: optional per-dimension count of indivisible units (e.g. heads of a q kernel); the
      dimension is split only when this count divides too.
    quiet: no log line for a fallback (activation constraints, traced at every compile).
  """
  entries = list(spec) + [None] * (len(shape) - len(spec))
  if len(entries) > len(shape):
    raise ValueError(f"{what}: spec {spec} has more entries than shape {tuple(shape)} has dims.")
  out = []
  for dim, axes in enumerate(entries):
    n = _axis_size(mesh, axes)
    count = shape[dim] if units is None or units[dim] is None else units[dim]
    if n > 1 and (shape[dim] % n or count % n):
      if not quiet:
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


def _cache_names(kv_heads: int, mesh: Mesh, head_dim_at: int) -> tuple:
  """Logical names of one `[B, KVH, ., .]` cache buffer whose head_dim is dim `head_dim_at`:
  kv heads over tensor, or, when they do not divide it (Qwen2.5-1.5B's 2 kv heads over
  tensor=4), head_dim instead, so the cache is never copied on every tensor shard."""
  names = ["activation_batch", None, "cache_length", "cache_length"]
  if kv_heads % _axis_size(mesh, dict(LOGICAL_AXIS_RULES)["cache_kv_heads"]) == 0:
    names[1] = "cache_kv_heads"
  else:
    names[head_dim_at] = "cache_head_dim"
  return tuple(names)


def cache_specs(cache: KVCache, mesh: Mesh) -> KVCache:
  """Specs for a `cmdp.models.KVCache`: batch over ("data", "fsdp"), kv heads over "tensor"
  (or head_dim, see `_cache_names`), each where divisible.

  k: one `[B, KVH, hd, S]` (float32) or `[B, KVH, S, hd]` buffer per layer; v: `[B, KVH, S,
  hd]`; mask `[B, S]`; index `[]`; pos `[B]`.
  """
  from cmdp.models.decode import KVCache, keys_transposed  # pylint: disable=g-import-not-at-top

  def spec(x, transposed):
    names = _cache_names(x.shape[1], mesh, 2 if transposed else 3)
    return fit_spec(logical_spec(names), x.shape, mesh, "cache", quiet=True)
  k = tuple(spec(x, keys_transposed(x.dtype)) for x in cache.k)
  v = tuple(spec(x, False) for x in cache.v)
  return KVCache(k=k, v=v,
                 mask=fit_spec(P(BATCH_AXES, None), cache.mask.shape, mesh, quiet=True),
                 index=P(), pos=fit_spec(P(BATCH_AXES), cache.pos.shape, mesh, quiet=True))


_ACTIVATION_MESH: contextvars.ContextVar = contextvars.ContextVar("activation_mesh",
                                                                  default=None)


@contextlib.contextmanager
def activation_mesh(mesh: Mesh | None):
  """While tracing inside this context, `constrain` pins activations on `mesh`."""
  token = _ACTIVATION_MESH.set(mesh)
  try:
    yield mesh
  finally:
    _ACTIVATION_MESH.reset(token)


def rows_per_shard(rows: int, mesh: Mesh | None = None) -> int:
  """Rows of a `[rows, ...]` activation each device holds on `mesh` (default: the
  `activation_mesh` being traced under): split over the batch axes where they divide,
  else all of them."""
  mesh = _ACTIVATION_MESH.get() if mesh is None else mesh
  shards = 1 if mesh is None else _axis_size(mesh, BATCH_AXES)
  return rows // shards if rows % shards == 0 else rows


def constrain(x: jax.Array, *names: str | None) -> jax.Array:
  """`x` pinned to the layout of its dims' logical names (`LOGICAL_AXIS_RULES`), each dim
  that does not divide its mesh axes left whole; the identity outside `activation_mesh`."""
  mesh = _ACTIVATION_MESH.get()
  if mesh is None:
    return x
  spec = fit_spec(logical_spec(names), x.shape, mesh, quiet=True)
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))


def constrain_cache(x: jax.Array, head_dim_at: int) -> jax.Array:
  """One `[B, KVH, ., .]` decode-cache buffer pinned as `cache_specs` lays it out."""
  mesh = _ACTIVATION_MESH.get()
  if mesh is None:
    return x
  return constrain(x, *_cache_names(x.shape[1], mesh, head_dim_at))


def on_mesh(fn: Callable, mesh: Mesh | None) -> Callable:
  """`fn` traced under `activation_mesh(mesh)` (what to hand `jax.jit`)."""
  @functools.wraps(fn)
  def wrapped(*args, **kwargs):
    with activation_mesh(mesh):
      return fn(*args, **kwargs)
  return wrapped


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
  from cmdp.models.transformer import cast_params  # pylint: disable=g-import-not-at-top
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
