"""The compiled programs of a training step, lowered and compiled with abstract inputs.

    rollout          the sampler (prefill + `lax.while_loop` decode), one call per step
    teacher scoring  the teacher's logits on the rollout: a program of its own for a teacher
                     on its own mesh; else the teacher runs inside the train step, microbatch
                     by microbatch, and this phase is only that forward's share of its cost
    train step       `Experiment.make_train_step` (the objective, grad accumulation, optimizer
                     and, for a teacher on the student's mesh, the teacher's forward); for a
                     teacher on its own mesh, the host-driven step's compiled parts (its
                     memory: the part that needs the most; its cost: theirs summed), the
                     teacher's logits handed over one microbatch at a time

Every program is the trainer's own (`cmdp.training.programs`, through the `Experiment`).

Memory comes from `compiled.memory_analysis()` (per device). Cost comes from
`compiled.cost_analysis()` (per device: flops, bytes accessed and, on TPU, XLA's
`optimal_seconds`), with one correction: XLA counts the body of a while loop once, whatever
its trip count. Four loops matter here, and each gets its trip count back:

  * the `nn.scan` over layers (forward and backward, student and teacher): a zero-layer
    copy of the same program gives the cost outside the layers, so cost = outside + L x
    (full - outside);
  * gradient accumulation (a `lax.scan` over A microbatches): the zero-layer program with
    A = 1 gives the optimizer plus A x the per-microbatch cost outside the layers;
  * the decode loop (N - 1 steps after the prefill): one decode step is compiled alone and
    added N - 2 more times (the cached decode path unrolls its layers: counted in full);
  * a prefill in chunks of columns (`cmdp.rollout.sampler.prefill_chunk`, n passes): one
    pass is compiled alone and added n - 1 more times.

The TPU programs are compiled without collective matmuls (`TPU_OPTIONS`), whose loops XLA
would count once as well.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import math
import re
import tempfile

import jax
import jax.numpy as jnp
from jax.experimental.layout import Format, Layout
from jax.sharding import NamedSharding, PartitionSpec as P

from cmdp import models, sharding
from cmdp.models import decode as decode_lib
from cmdp.plan import abstract
from cmdp.plan import buffers as buffers_lib
from cmdp.rollout import sampler as sampler_lib
from cmdp.rollout.processors import sample_token
from cmdp.training import experiment as experiment_lib
from cmdp.training import programs

# Stop ids only change a constant the decode loop compares tokens with, never a shape or a
# cost, and the planner has no tokenizer: it samples with stop id 0 and pad id 0.
_STOP_IDS, _PAD_ID = (0,), 0


@dataclasses.dataclass(frozen=True)
class Cost:
  """Per-device cost of running a program (additive, so loop trip counts can be applied).

  seconds is XLA's `optimal_seconds`, None where XLA gives none (CPU) or an invalid one (< 0).
  """
  flops: float
  bytes_accessed: float
  seconds: float | None

  def __add__(self, other: "Cost") -> "Cost":
    s = None if self.seconds is None or other.seconds is None else self.seconds + other.seconds
    return Cost(self.flops + other.flops, self.bytes_accessed + other.bytes_accessed, s)

  def __sub__(self, other: "Cost") -> "Cost":
    return self + other * -1

  def __mul__(self, k: float) -> "Cost":
    return Cost(self.flops * k, self.bytes_accessed * k,
                None if self.seconds is None else self.seconds * k)


@dataclasses.dataclass(frozen=True)
class Program:
  """Per-device figures of one compiled program."""
  argument: int  # bytes of the arguments
  output: int  # bytes of the outputs
  alias: int  # output bytes that reuse donated arguments
  temp: int  # temporaries (activations, caches in loop carries, collectives' buffers)
  cost: Cost  # as XLA reports it (loop bodies once)
  # Why XLA refused to compile the program (lack of memory or a compiler error), else None;
  # the figures are then lower bounds.
  oom: str | None = None
  # The largest buffers live at the program's peak (`cmdp.plan.buffers`), when asked for.
  buffers: tuple = ()

  @property
  def peak(self) -> int:
    return self.argument + self.output - self.alias + self.temp


def measure(compiled) -> Program:
  """Reads `memory_analysis()` and `cost_analysis()` of a compiled program."""
  mem = compiled.memory_analysis()
  ca = compiled.cost_analysis()
  ca = ca[0] if isinstance(ca, (list, tuple)) else ca
  seconds = ca.get("optimal_seconds")
  seconds = float(seconds) if seconds is not None and seconds >= 0 else None
  cost = Cost(float(ca.get("flops", 0.0)), float(ca.get("bytes accessed", 0.0)), seconds)
  return Program(int(mem.argument_size_in_bytes), int(mem.output_size_in_bytes),
                 int(mem.alias_size_in_bytes), int(mem.temp_size_in_bytes), cost)


# TPU compiler options of every planned program:
#   xla_tpu_no_crash_on_oom: compile even when the program exceeds HBM (XLA then fails with
#     RESOURCE_EXHAUSTED; the planner wants to know by how much);
#   no windowed einsums (collective matmuls): XLA splits a matmul whose weights are
#     all-gathered over fsdp into a loop over the shards, and its cost analysis counts a
#     loop's body once (measured on v5e-8: half the FLOPs of a [32 x 512, 3584] x [3584,
#     152k] head). Without them each all-gathered weight is whole while it is used, so the
#     memory planned is at least what the default compilation needs.
TPU_OPTIONS = {"xla_tpu_no_crash_on_oom": True,
               "xla_jf_spmd_threshold_for_windowed_einsum_mib": 1 << 20}


def _compiler_options(args) -> dict:
  """`TPU_OPTIONS` for a program on TPU devices, else none."""
  for leaf in jax.tree.leaves(args):
    sharding_ = getattr(leaf, "sharding", None)
    if sharding_ is not None:
      platform = next(iter(sharding_.device_set)).platform
      return dict(TPU_OPTIONS) if platform == "tpu" else {}
  return {}


def compile_program(fn, *args, breakdown: bool = False) -> Program:
  """`fn.lower(*args).compile()`, measured; a program XLA refuses for lack of memory is
  returned with `oom` set (see `_refused`); `breakdown`: with its peak's largest buffers."""
  return compile_lowered(fn.lower(*args), args, breakdown)


def compile_lowered(lowered, args, breakdown: bool = False) -> Program:
  """Compiles a lowered program whose arguments were `args` (see `compile_program`)."""
  options = _compiler_options(args)
  with tempfile.TemporaryDirectory(prefix="cmdp_plan_") as dump:
    if breakdown:
      options["xla_dump_to"] = dump
    try:
      program = measure(lowered.compile(compiler_options=options))
    except jax.errors.JaxRuntimeError as err:
      return _refused(lowered, args, str(err))
    return dataclasses.replace(program, buffers=buffers_lib.peak_buffers(dump))


_NEEDED = (re.compile(r"Allocation \(size=(\d+)\)"),
           re.compile(r"HLO temporaries \(([\d.]+)G\)"))


def _refused(lowered, args, message: str) -> Program:
  """A program XLA would not compile: one buffer or its temporaries exceed HBM
  (RESOURCE_EXHAUSTED), or the compiler failed (e.g. an INTERNAL RET_CHECK).

  Memory: the arguments' per-device bytes plus, for lack of memory, the smallest amount XLA
  says it needed (lower bounds). Cost: the unpartitioned program's cost analysis divided by
  the device count.
  """
  m = _NEEDED[0].search(message)
  needed = int(m.group(1)) if m else 0
  m = _NEEDED[1].search(message)
  needed = max(needed, int(float(m.group(1)) * (1 << 30)) if m else 0)
  leaves = [x for x in jax.tree.leaves(args) if getattr(x, "sharding", None) is not None]
  n = len(leaves[0].sharding.device_set) if leaves else 1
  ca = lowered.cost_analysis() or {}
  ca = ca[0] if isinstance(ca, (list, tuple)) else ca
  cost = Cost(float(ca.get("flops", 0.0)) / n, float(ca.get("bytes accessed", 0.0)) / n, None)
  first = message.splitlines()[0].split(" :: ")[0]
  if "RESOURCE_EXHAUSTED" not in first:
    first = "compiler error: " + first[:300]
  return Program(shard_bytes(args), 0, 0, needed, cost, oom=first)


@dataclasses.dataclass(frozen=True)
class Phase:
  """One compiled phase of a step.

  name: "rollout", "teacher scoring" or "train step".
  side: "student" or "teacher": whose mesh runs it.
  program: the phase's main program (its memory is the phase's).
  cost: per-device cost of the whole phase per training step (trip counts applied).
  params_in_args: which resident trees are arguments of the program.
  kv_cache: per-device bytes of the decode cache (rollout only; inside `program.temp`).
  within: the phase whose program runs this one (teacher scoring inside the train step):
    `cost` is then a share of that phase's cost, and `program` (the same computation
    compiled alone) says nothing about memory.
  layer_cost: one layer's cost, when the phase is a layer scan another program repeats
    (teacher scoring: one teacher layer on the whole step's batch).
  decode_step: one decode-loop iteration's cost at the whole cache (its largest window;
    rollout only, with costs; HBM traffic, see `HBM_OPTIONS`).
  decode_steps: iterations of the decode loop in `cost` (N - 1).
  decode_loop: the cost of those iterations, each at its cache window (`decode_windows`).
  decode_floor: bytes one chip must read over them at least (`decode_floor`).
  """
  name: str
  side: str
  program: Program
  cost: Cost
  params_in_args: tuple[str, ...]
  kv_cache: int = 0
  within: str | None = None
  layer_cost: Cost | None = None
  decode_step: Cost | None = None
  decode_steps: int = 0
  decode_loop: Cost | None = None
  decode_floor: float | None = None


def shard_bytes(tree) -> int:
  """Per-device bytes of a tree of sharded ShapeDtypeStructs (the largest shard)."""
  total = 0
  for x in jax.tree.leaves(tree):
    shape = x.sharding.shard_shape(x.shape) if x.sharding is not None else x.shape
    total += jnp.dtype(x.dtype).itemsize * math.prod(shape)
  return total


def _zero_layer(exp: experiment_lib.Experiment, devices, *, teacher=False, student=False,
                grad_accum_steps=None) -> experiment_lib.Experiment:
  """The same experiment with zero-layer teacher and/or student (and other accumulation)."""
  config = copy.deepcopy(exp.config)
  if grad_accum_steps is not None:
    config.grad_accum_steps = grad_accum_steps
  t, s = exp.teacher.config, exp.student.config
  cfgs = (t.replace(num_layers=0) if teacher else t, s.replace(num_layers=0) if student else s)
  return abstract.abstract_experiment(config, devices, model_cfgs=cfgs)


# ---- rollout ----

def _sampler(exp, model: str):
  """`(model, mesh, sampler)`: the trainer's sampler (`cmdp.training.programs.sampler`) for
  the config's rollout settings."""
  r = exp.config.rollout
  m = exp.student if model == "student" else exp.teacher
  mesh = exp.student_mesh if model == "student" else exp.teacher_mesh
  sampler = programs.sampler(m.config, mesh, r.max_new_tokens, r.temperature, r.top_k, r.top_p,
                             False, _STOP_IDS, _PAD_ID, exp.hp.group_size)
  return m, mesh, sampler


def _rng(mesh) -> jax.ShapeDtypeStruct:
  """A raw uint32 PRNG key (the train state's `rng`), replicated."""
  return jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=NamedSharding(mesh, P()))


def _sampler_program(exp, model: str, breakdown: bool = False) -> Program:
  """The sampler the trainer calls, compiled for the config's batch and lengths: it takes
  each prompt once and repeats it group_size times inside."""
  c = exp.config
  m, mesh, sampler = _sampler(exp, model)
  n = c.batch_size // exp.hp.group_size
  spec = NamedSharding(mesh, sampler.prompt_spec(n))
  prompts = jax.ShapeDtypeStruct((n, c.data.max_prompt_len), jnp.int32, sharding=spec)
  mask = jax.ShapeDtypeStruct(prompts.shape, jnp.bool_, sharding=spec)
  args = (m.params, prompts, mask, _rng(mesh))
  return compile_lowered(sampler.lower(*args), args, breakdown)


def _decode_step_cost(exp, model: str, width: int = 1, window: int | None = None,
                      hbm: bool = False, rows: int | None = None) -> Cost:
  """Cost of one decode-loop iteration: a one-token `forward_with_cache` and the draw; for
  `width` > 1, one prefill pass over that many columns (last position's logits, no draw).

  Traced as the sampler traces it (under the activation mesh, the weights laid out by
  `decode_params`), the cache's layout left to XLA (`Layout.AUTO`, as it chooses it for the
  loop's carry). `window`: the step attends over the cache's first `window` slots (else it
  chooses among `attention_windows`, as the loop does). `hbm`: on TPU, compiled without
  memory-space assignment (`HBM_OPTIONS`), so that XLA's bytes are the program's HBM
  traffic. `rows`: the batch (default `batch_size`; a prefill pass runs each prompt once,
  `batch_size / group_size` rows).
  """
  c = exp.config
  m = exp.student if model == "student" else exp.teacher
  mesh = exp.student_mesh if model == "student" else exp.teacher_mesh
  cfg, b = m.config, rows or c.batch_size
  dparams = decode_params_shapes(exp, model)
  cache = _decode_cache(exp, model, b)
  cache = abstract.place(cache, models.cache_specs(cache, mesh), mesh)
  tokens = abstract.rows(exp, (b, width), jnp.int32, mesh)
  mask = abstract.rows(exp, (b, width), jnp.bool_, mesh)
  r = c.rollout
  windows = None if window is None else (window,)

  def step(dp, tok, tok_mask, kv, key):
    logits, kv = models.forward_with_cache(cfg, dp, tok, kv, tok_mask, last_only=width > 1,
                                           windows=windows)
    if width > 1:
      return logits, kv
    new, lp = sample_token(key, logits[:, 0], temperature=r.temperature, top_k=r.top_k,
                           top_p=r.top_p, greedy=False)
    return new, lp, kv

  auto = lambda x: Format(Layout.AUTO, x.sharding)
  kv_in = cache._replace(k=tuple(map(auto, cache.k)), v=tuple(map(auto, cache.v)),
                         mask=cache.mask.sharding, index=cache.index.sharding,
                         pos=cache.pos.sharding)
  shardings = lambda tree: jax.tree.map(lambda x: x.sharding, tree)
  rows = NamedSharding(mesh, sharding.batch_spec())
  out = (rows, rows, kv_in) if width == 1 else (rows, kv_in)  # token, log-prob / logits
  fn = jax.jit(sharding.on_mesh(step, mesh), donate_argnums=(3,),
               in_shardings=(shardings(dparams), tokens.sharding, mask.sharding, kv_in,
                             NamedSharding(mesh, P())),
               out_shardings=out)
  args = (dparams, tokens, mask, cache, _rng(mesh))
  lowered = fn.lower(*args)
  if hbm and _compiler_options(args):
    return measure(lowered.compile(compiler_options={**TPU_OPTIONS, **HBM_OPTIONS})).cost
  return compile_lowered(lowered, args).cost


# The decode loop's cost on TPU is read from its step compiled without memory-space
# assignment. With it, XLA stages what a step reads through the chip's VMEM (prefetches of
# weights and cache slices) and its cost analysis counts each staged buffer on both sides
# of the copy and again where it is read: a [64, 1536] x [1536, 17920] bfloat16 matmul
# (55 MB of weights) counts 278 MB, 57.5 MB without; a decode step of Qwen2.5-1.5B at 64
# rows per v5e chip 10.2 GB, 6.2 GB without. Without it, each instruction reads its
# operands from HBM and writes its result there: the HBM traffic of the program.
HBM_OPTIONS = {"xla_msa_enable": False}


def decode_params_shapes(exp, model: str):
  """The sampler's `decode_params` of the model as sharded ShapeDtypeStructs: laid out
  under the activation mesh, fused unless under tensor parallelism, as the sampler does."""
  m = exp.student if model == "student" else exp.teacher
  mesh = exp.student_mesh if model == "student" else exp.teacher_mesh
  layout = functools.partial(models.decode_params, m.config, fuse=mesh.shape["tensor"] == 1)
  layout = sharding.on_mesh(layout, mesh)
  dshapes = jax.eval_shape(layout, m.params)
  compiled = jax.jit(layout).lower(m.params).compile(
      compiler_options=_compiler_options(m.params))
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      dshapes, compiled.output_shardings)


def decode_windows(exp, model: str) -> dict[int, int]:
  """`{window: steps}`: how many of the decode loop's N - 1 steps attend over each cache
  window (`models.decode.attention_windows`): step i (1..N-1) writes slot P + i - 1 and
  reads the smallest window of at least P + i slots."""
  del model  # the same cache length for either model
  p, n = exp.config.data.max_prompt_len, exp.config.rollout.max_new_tokens
  windows = decode_lib.attention_windows(p + n - 1, 1)
  out = {}
  for i in range(1, n):
    w = next(w for w in windows if w >= p + i)
    out[w] = out.get(w, 0) + 1
  return out


def decode_floor(weight_bytes: float, cache_bytes: float, prompt: int, new: int) -> float:
  """Bytes one chip must read over the decode loop's `new` - 1 steps at least: the decode
  weights (`weight_bytes`, what a step multiplies by) at every step, and of its cache
  (`cache_bytes` for all `prompt` + `new` - 1 slots) the slots each step attends over:
  step i (1..new-1) attends over prompt + i slots."""
  steps = new - 1
  slots = prompt + new - 1
  attended = steps * prompt + steps * (steps + 1) / 2
  return steps * weight_bytes + cache_bytes * attended / slots


def decode_weight_bytes(exp, model: str) -> float:
  """Per-chip bytes of the weights a decode step multiplies by: every layer's and the
  output head's, whole along the model width, split over tensor (`decode_params`), and
  its rows of the embedding table."""
  m = exp.student if model == "student" else exp.teacher
  mesh = exp.student_mesh if model == "student" else exp.teacher_mesh
  dparams = decode_params_shapes(exp, model)
  nbytes = lambda tree: sum(x.size * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))
  rows = sampler_lib.rows_per_device(exp.config.batch_size, mesh)
  row = m.config.hidden_size * jnp.dtype(dparams.embedding.dtype).itemsize
  return nbytes((dparams.layers, dparams.head)) / mesh.shape["tensor"] + rows * row


def _decode_cache(exp, model: str, rows: int | None = None):
  """The sampler's decode cache (P + N - 1 slots) as ShapeDtypeStructs, of `rows` rows
  (default `batch_size`)."""
  c = exp.config
  cfg = (exp.student if model == "student" else exp.teacher).config
  slots = c.data.max_prompt_len + c.rollout.max_new_tokens - 1
  return jax.eval_shape(lambda: models.init_cache(cfg, rows or c.batch_size, slots))


def kv_cache_bytes(exp, model: str) -> int:
  """Per-device bytes of the sampler's decode cache (P + N - 1 slots)."""
  mesh = exp.student_mesh if model == "student" else exp.teacher_mesh
  cache = _decode_cache(exp, model)
  return shard_bytes(abstract.place(cache, models.cache_specs(cache, mesh), mesh))


def rollout(exp, with_cost: bool = True) -> Phase | None:
  """The rollout phase (None when the objective trains on reference sequences).

  With costs: the sampler's program counts its decode loop's body once; that body (one
  step as the sampler compiles it) is taken out and the loop's N - 1 steps put in, each
  at its cache window (`decode_windows`), as HBM traffic (`HBM_OPTIONS`). A step's cost is
  affine in its window: the steps at the smallest and the largest window used are
  compiled, the others interpolated.
  """
  model = abstract.rollout_model(exp)
  if model is None:
    return None
  program = _sampler_program(exp, model, breakdown=with_cost)
  cost = program.cost
  steps = max(exp.config.rollout.max_new_tokens - 1, 0)
  step = loop = floor = None
  if with_cost and steps:
    windows = decode_windows(exp, model)
    lo, hi = min(windows), max(windows)
    at_lo = _decode_step_cost(exp, model, window=lo, hbm=True)
    step = at_lo if hi == lo else _decode_step_cost(exp, model, window=hi, hbm=True)
    at = lambda w: at_lo if hi == lo else at_lo + (step - at_lo) * ((w - lo) / (hi - lo))
    loop = functools.reduce(lambda x, y: x + y, (at(w) * k for w, k in windows.items()))
    cost = cost - _decode_step_cost(exp, model) + loop
    c = exp.config
    floor = decode_floor(decode_weight_bytes(exp, model), kv_cache_bytes(exp, model),
                         c.data.max_prompt_len, c.rollout.max_new_tokens)
  if with_cost:
    width = exp.config.data.max_prompt_len  # the planner's prompts share no prefix
    g = exp.hp.group_size  # each prompt prefilled once (where that splits over the chips)
    prompts = sampler_lib.prefill_rows(exp.config.batch_size // g, g, _sampler(exp, model)[1])
    chunk = sampler_lib.prefill_chunk(
        sampler_lib.rows_per_device(prompts, _sampler(exp, model)[1]), width)
    if chunk < width:  # so is the prefill's scan over its passes
      cost = cost + _decode_step_cost(exp, model, chunk, rows=prompts) * (width // chunk - 1)
  return Phase("rollout", model, program, cost,
               ("student_params",) if model == "student" else ("teacher_params",),
               kv_cache_bytes(exp, model), decode_step=step, decode_steps=steps,
               decode_loop=loop, decode_floor=floor)


# ---- teacher scoring ----

def scoring_rows(exp) -> int:
  """Rows the teacher scores per call: on its own mesh, one microbatch of a minibatch (the
  host-driven step hands them over one at a time); inside the train step, one microbatch
  (when the microbatch still splits over the batch axes)."""
  b, a = exp.config.batch_size, exp.config.grad_accum_steps
  if not exp.teacher_inside_step:
    return b // (a * exp.config.ppo_minibatches)
  shards = exp.student_mesh.shape["data"] * exp.student_mesh.shape["fsdp"]
  inside = exp.teacher_inside_step and a > 1 and (b // a) % shards == 0
  return b // a if inside else b


def _scoring_program(exp, rows: int | None = None, breakdown: bool = False) -> Program:
  """`cmdp.training.programs.teacher_logits` on `rows` sequences (default: the whole step's
  batch), on the teacher's mesh (rows over its batch axes, or replicated where they do not
  split, as the train step places a microbatch)."""
  rows = rows or exp.config.batch_size
  mesh = exp.teacher_mesh
  fn = programs.teacher_logits(exp.teacher.config, mesh,
                               exp.config.rollout.teacher_logits_dtype, rows,
                               exp.step_config.response_start,
                               **exp.step_config.prefixes(exp.hp.group_size))
  spec = NamedSharding(mesh, sharding.rows_spec(rows, mesh))
  length = abstract.sequence_length(exp)
  inputs = jax.ShapeDtypeStruct((rows, length), jnp.int32, sharding=spec)
  mask = jax.ShapeDtypeStruct(inputs.shape, jnp.bool_, sharding=spec)
  return compile_program(fn, exp.teacher.params, inputs, mask, breakdown=breakdown)


def teacher_scoring(exp, devices, with_cost: bool = True) -> Phase | None:
  """The teacher's forward over the step's batch; cost = outside + L x (one layer), the
  layer from a zero-layer teacher.

  A teacher on its own mesh: a phase of its own (memory and cost). A teacher on the
  student's mesh runs inside the train step, once per microbatch: the phase is then
  `within="train step"`, its cost (A x one microbatch's forward) a share of the train
  step's, and its `layer_cost` lets the train step count every teacher layer. Without
  costs (`with_cost=False`) such a share is not compiled: None.
  """
  inside = exp.teacher_inside_step
  if inside and not with_cost:
    return None
  rows = scoring_rows(exp)
  calls = exp.config.batch_size // rows
  if not inside:  # the host-driven step scores each microbatch once per PPO epoch
    calls *= exp.config.ppo_epochs
  program = _scoring_program(exp, rows, breakdown=with_cost and not inside)
  cost, layer = program.cost, None
  if with_cost:
    outside = _scoring_program(_zero_layer(exp, devices, teacher=True), rows).cost
    layer = (program.cost - outside) * calls
    cost = outside * calls + layer * exp.teacher.config.num_layers
  return Phase("teacher scoring", "teacher", program, cost, ("teacher_params",),
               within="train step" if inside else None, layer_cost=layer)


# ---- train step ----

def train_step_fn(exp: experiment_lib.Experiment, state_shardings):
  """How the planner obtains the jitted train step: the trainer's own builder, called as
  the trainer calls it, `(state, exp.step_teacher_params, batch)`.

  The one place to adapt when the step's signature changes.
  """
  return exp.make_train_step(exp.hp, state_shardings)


def _train_program(exp, breakdown: bool = False) -> Program:
  state, shardings = abstract.abstract_state(exp)
  fn = train_step_fn(exp, shardings)
  args = (state, exp.step_teacher_params, abstract.train_batch(exp))
  if hasattr(fn, "lower_parts"):  # a teacher on its own mesh: compiled parts, host-driven
    return _host_step_program(fn.lower_parts(*args), state, breakdown)
  return compile_program(fn, *args, breakdown=breakdown)


def _host_step_program(parts, state, breakdown: bool = False) -> Program:
  """A host-driven train step (`cmdp.training.step.make_host_train_step`) as one Program:
  the cost of its compiled parts, each counted once (as XLA counts a scan's body;
  `train_step` applies the trip counts), and the memory of the part that needs the most.

  Parts are compared, and the chosen one's `argument` counted, as if each took the whole
  resident state (the student's params and optimiser state stay on the devices anyway, and
  `phase_memory` subtracts both from a train step's arguments).
  """
  resident = {id(x): x for x in jax.tree.leaves((state.params, state.opt_state))}
  whole = shard_bytes(list(resident.values()))
  found = []
  for _, lowered, args in parts:
    program = compile_lowered(lowered, args, breakdown)
    in_args = shard_bytes([x for x in jax.tree.leaves(args) if id(x) in resident])
    found.append(dataclasses.replace(program, argument=program.argument - in_args + whole))
  cost = functools.reduce(lambda x, y: x + y, (p.cost for p in found))
  peak = max(found, key=lambda p: p.peak)
  refused = [p.oom for p in found if p.oom]
  return dataclasses.replace(peak, cost=cost, oom=refused[0] if refused else None)


def train_step(exp, devices, with_cost: bool = True, teacher: Phase | None = None) -> Phase:
  """The update phase; trip counts of the layer scans and of grad accumulation applied.

  With A microbatches and L student layers: cost = C(L=0, A=1) + A x L x (C(L, A) -
  C(L=0, A)). A teacher inside the step scans its L_t layers too, counted once in C(L=0,
  A=1): `teacher.layer_cost` (one teacher layer on the whole batch) adds the other L_t - 1.
  """
  program = _train_program(exp, breakdown=with_cost)
  cost = program.cost
  if with_cost:
    a, layers = exp.config.grad_accum_steps, exp.student.config.num_layers
    outside_a = _train_program(_zero_layer(exp, devices, student=True)).cost
    outside_1 = (outside_a if a == 1 else
                 _train_program(_zero_layer(exp, devices, student=True, grad_accum_steps=1)).cost)
    cost = outside_1 + (program.cost - outside_a) * (a * layers)
    if exp.teacher_inside_step and teacher is not None and teacher.layer_cost is not None:
      cost = cost + teacher.layer_cost * max(exp.teacher.config.num_layers - 1, 0)
  params = ("student_params", "optimizer")
  if exp.teacher_inside_step:
    params += ("teacher_params",)
  return Phase("train step", "student", program, cost, params)
