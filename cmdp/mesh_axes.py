"""The mesh's axes, the logical names of array dimensions and their rules, and `constrain`,
which pins an activation to them: what the model, the decode loop and the step need of a
mesh, and no more (the parameter layout, `make_mesh` and the jitted functions' signatures
are `cmdp.sharding`'s, which sits below the models and re-exports these names).

Mesh axes (auto axis types):

    data    pure data parallelism: batch rows are split, params replicated.
    fsdp    batch rows are split AND parameters, optimiser state and gradients are stored
            split (ZeRO-3: each layer's weights are all-gathered where they are used, the
            gradients reduce-scattered).
    tensor  model parallelism: vocab, heads and FFN width are split.

Every dimension of a parameter or an activation has a logical name, and `LOGICAL_AXIS_RULES`
maps names to mesh axes (MaxText's `logical_axis_rules`): parameters' model width ("embed")
over fsdp, activations' batch over ("data", "fsdp"), heads / MLP width / vocabulary over
tensor. Activations are pinned by `constrain(x, *names)` inside the model, the decode loop
and the step, which acts only while a function is traced under `activation_mesh(mesh)`
(`on_mesh`; off a mesh it is the identity). Any dimension that does not divide its mesh
axes (e.g. 9 heads over tensor=4) is left whole instead (`fit_spec`).
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import logging
import math
from typing import Any, Callable, Sequence

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

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
    # head_dim over tensor, see `cmdp.models.decode.cache_specs`
    ("cache_kv_heads", "tensor"),
    ("cache_head_dim", "tensor"),
    ("cache_length", None),
)


def logical_spec(names: Sequence[str | None],
                 rules: Sequence[tuple[str, Any]] = LOGICAL_AXIS_RULES) -> P:
  """The PartitionSpec of dims with these logical names (None: a dim never split)."""
  table = dict(rules)
  unknown = [n for n in names if n is not None and n not in table]
  if unknown:
    raise ValueError(f"logical axis names {unknown} have no rule in {sorted(table)}.")
  return P(*(None if n is None else table[n] for n in names))


def axis_size(mesh: Mesh, axes) -> int:
  """How many devices the mesh axes `axes` (a name, a tuple of names or None) span."""
  if axes is None:
    return 1
  axes = (axes,) if isinstance(axes, str) else axes
  return math.prod(mesh.shape[a] for a in axes)


def fit_spec(spec: P, shape: Sequence[int], mesh: Mesh, what: str = "array",
             units: Sequence[int] | None = None, log: logging.Logger | None = None) -> P:
  """`spec` with every dimension that does not divide its mesh axes replaced by None.

  Args:
    spec: the wanted PartitionSpec (may be shorter than `shape`).
    shape: the array's shape.
    mesh: the mesh.
    what: a name for the log line.
    units: optional per-dimension count of indivisible units (e.g. heads of a q kernel); the
      dimension is split only when this count divides too.
    log: where to log each fallback (None, what activation constraints pass: they are
      traced at every compile, so they log nothing).
  """
  entries = list(spec) + [None] * (len(shape) - len(spec))
  if len(entries) > len(shape):
    raise ValueError(f"{what}: spec {spec} has more entries than shape {tuple(shape)} has dims.")
  out = []
  for dim, axes in enumerate(entries):
    n = axis_size(mesh, axes)
    count = shape[dim] if units is None or units[dim] is None else units[dim]
    if n > 1 and (shape[dim] % n or count % n):
      if log is not None:
        log.info("%s: dim %d (size %d, %d units) does not divide mesh axes %s (%d); replicated.",
                 what, dim, shape[dim], count, axes, n)
      axes = None
    out.append(axes)
  return P(*out)


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


def traced_mesh() -> Mesh | None:
  """The mesh of the enclosing `activation_mesh`, or None outside one."""
  return _ACTIVATION_MESH.get()


def on_mesh(fn: Callable, mesh: Mesh | None) -> Callable:
  """`fn` traced under `activation_mesh(mesh)` (what to hand `jax.jit`)."""
  @functools.wraps(fn)
  def wrapped(*args, **kwargs):
    with activation_mesh(mesh):
      return fn(*args, **kwargs)
  return wrapped


def rows_per_shard(rows: int, mesh: Mesh | None = None) -> int:
  """Rows of a `[rows, ...]` activation each device holds on `mesh` (default: the
  `activation_mesh` being traced under): split over the batch axes where they divide,
  else all of them."""
  mesh = traced_mesh() if mesh is None else mesh
  shards = 1 if mesh is None else axis_size(mesh, BATCH_AXES)
  return rows // shards if rows % shards == 0 else rows


def constrain(x: jax.Array, *names: str | None) -> jax.Array:
  """`x` pinned to the layout of its dims' logical names (`LOGICAL_AXIS_RULES`), each dim
  that does not divide its mesh axes left whole; the identity outside `activation_mesh`."""
  mesh = traced_mesh()
  if mesh is None:
    return x
  spec = fit_spec(logical_spec(names), x.shape, mesh)
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))
