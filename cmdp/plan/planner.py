"""Plans a run on a topology: per-device memory of each phase, whether it fits, FLOPs and time.

    plan = make_plan(config, topology, devices)      # compiles; loads no weights
    plan.fits, plan.peak.total, plan.estimated_step_s

Memory per device, per phase (`PhaseMemory`): what stays resident for the whole run (the
student's params and optimiser state, the teacher's params; on the devices that hold them)
plus what the phase's program adds (its inputs and outputs other than those trees, and its
temporaries; the rollout's KV cache is shown apart from the other temporaries). A run needs
the largest phase total (`peak`) to fit in the device's memory.

A teacher on the student's mesh runs inside the train step: it has no phase of its own
(`Plan.teacher_in_step` is its forward's share of the train step's cost).
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import itertools
import math
import time

import jax
import ml_collections

from cmdp import models
from cmdp.plan import abstract, flops as flops_lib, phases
from cmdp.plan import topology as topology_lib
from cmdp.plan.topology import Topology, capacity_bytes
from cmdp.training import optimizer as optimizer_lib

RESIDENT = ("student_params", "optimizer", "teacher_params")


@dataclasses.dataclass(frozen=True)
class PhaseMemory:
  """Per-device bytes while one phase runs; `total` is the sum of the other fields."""
  phase: str
  student_params: int
  optimizer: int
  teacher_params: int
  kv_cache: int
  temp: int  # the program's temporaries, without the KV cache
  io: int  # the program's other inputs and outputs (batch, logits, rollout, metrics)
  total: int


@dataclasses.dataclass(frozen=True)
class Alternative:
  """A mesh / grad-accumulation setting tried when the config does not fit."""
  mesh: dict
  grad_accum_steps: int
  peak_phase: str
  peak_bytes: int
  fits: bool


@dataclasses.dataclass
class Plan:
  """What `make_plan` found (see the module docstring)."""
  config: ml_collections.ConfigDict
  topology: Topology
  mesh: dict  # the student's mesh axis sizes
  teacher_mesh: dict
  grad_accum_steps: int
  param_counts: dict  # {"teacher": n, "student": n}
  phases: list  # phases.Phase with their own program, in step order
  memory: list  # PhaseMemory, same order
  capacity: int  # bytes one device may use
  capacity_what: str
  flops_per_step: float | None  # per device, all phases, trip counts applied
  model_flops: float  # per device: the models' matmul FLOPs of a step (`cmdp.plan.flops`)
  estimated_step_s: float | None
  time_source: str
  compile_s: float
  alternatives: list = dataclasses.field(default_factory=list)
  # The teacher's forward when it runs inside the train step (a share of its cost), else None.
  teacher_in_step: phases.Phase | None = None

  @property
  def peak(self) -> PhaseMemory:
    return max(self.memory, key=lambda m: m.total)

  @property
  def refused(self) -> list:
    """Phases XLA would not compile for lack of memory (their figures are lower bounds)."""
    return [p for p in self.phases if p.program.oom]

  @property
  def fits(self) -> bool:
    return self.peak.total <= self.capacity and not self.refused


def resident_bytes(exp) -> dict:
  """Per-device bytes of the student's params and optimiser state and the teacher's params."""
  state, _ = abstract.abstract_state(exp)
  return {"student_params": phases.shard_bytes(state.params),
          "optimizer": phases.shard_bytes(state.opt_state),
          "teacher_params": phases.shard_bytes(exp.teacher.params)}


def shares_devices(exp) -> bool:
  """Whether teacher and student live on the same devices (else teacher_disjoint)."""
  devices = lambda mesh: {d.id for d in mesh.devices.flat}
  return devices(exp.student_mesh) == devices(exp.teacher_mesh)


def phase_memory(phase: phases.Phase, resident: dict, shared: bool) -> PhaseMemory:
  """The per-device bytes while `phase` runs (see the module docstring)."""
  side = {"student": ("student_params", "optimizer"), "teacher": ("teacher_params",)}
  present = RESIDENT if shared else side[phase.side]
  parts = {k: (resident[k] if k in present else 0) for k in RESIDENT}
  prog = phase.program
  io = prog.argument + prog.output - prog.alias - sum(resident[k] for k in phase.params_in_args)
  temp = prog.temp - phase.kv_cache
  total = sum(parts.values()) + phase.kv_cache + temp + io
  return PhaseMemory(phase.name, kv_cache=phase.kv_cache, temp=temp, io=io, total=total, **parts)


@dataclasses.dataclass(frozen=True)
class Roofline:
  """A program's time on a chip: the larger of its compute time (FLOPs / peak FLOP/s) and
  its memory time (bytes accessed / HBM bandwidth); `bound` says which."""
  flops: float
  bytes_accessed: float
  compute_s: float
  memory_s: float

  @property
  def seconds(self) -> float:
    return max(self.compute_s, self.memory_s)

  @property
  def bound(self) -> str:
    return "memory" if self.memory_s > self.compute_s else "compute"


def roofline(flops: float, bytes_accessed: float, peak_flops: float,
             hbm_bandwidth: float) -> Roofline:
  """The roofline of a program doing `flops` and moving `bytes_accessed` (per chip) on a
  chip of `peak_flops` FLOP/s and `hbm_bandwidth` bytes/s."""
  return Roofline(flops, bytes_accessed, flops / peak_flops, bytes_accessed / hbm_bandwidth)


def _chip_roofline(cost: phases.Cost, chip: topology_lib.Chip) -> Roofline:
  return roofline(cost.flops, cost.bytes_accessed, chip.peak_flops, chip.hbm_bandwidth)


def phase_rooflines(phase: phases.Phase, topology: Topology) -> dict | None:
  """`{part: Roofline}` of a phase's compiled programs (None without a chip or a program).

  The rollout has two: the prefill (the sampler less its decode loop) and the decode loop
  (its N - 1 steps, each at its cache window: `phases.rollout`); every other phase is one
  program.
  """
  chip = topology.chip
  if chip is None or phase.program.oom:
    return None
  if phase.decode_loop is None:
    return {phase.name: _chip_roofline(phase.cost, chip)}
  loop = phase.decode_loop
  return {"prefill": _chip_roofline(phase.cost - loop, chip),
          "decode": _chip_roofline(loop, chip)}


def phase_seconds(phase: phases.Phase, topology: Topology) -> tuple[float | None, str]:
  """On a TPU chip the roofline (the sum over the phase's programs of max(FLOPs / peak,
  bytes accessed / HBM bandwidth)); else XLA's optimal_seconds where it gives one; else None."""
  parts = phase_rooflines(phase, topology)
  if parts is not None:
    chip = topology.chip
    return (sum(r.seconds for r in parts.values()),
            f"roofline: max(FLOPs / {chip.kind} {chip.peak_flops / 1e12:.0f} TFLOP/s, "
            f"bytes accessed / {chip.hbm_bandwidth / 1e9:.0f} GB/s) per program")
  if phase.cost.seconds is not None:
    return phase.cost.seconds, "XLA optimal_seconds"
  return None, "none: XLA gives no optimal_seconds on CPU and CPUs have no peak in the table"


def decode_loop(plan: "Plan") -> dict | None:
  """The rollout's decode loop on the plan's chip: `{"steps", "per_step", "total",
  "floor", "ratio"}` (None without a chip or a compiled rollout).

  `per_step`: a step at the whole cache (Roofline); `total`: the loop as planned, its N - 1
  steps each at its cache window (Roofline); `floor`: the loop's bandwidth floor, the bytes
  a chip must read (`phases.decode_floor`: the decode weights every step, the attended
  slots of its cache) over the HBM bandwidth (Roofline, no FLOPs); `ratio`: the planned
  decode time over the floor's.
  """
  phase = next((p for p in plan.phases if p.decode_loop is not None), None)
  chip = plan.topology.chip
  if phase is None or chip is None or phase.program.oom:
    return None
  total = _chip_roofline(phase.decode_loop, chip)
  floor = _chip_roofline(phases.Cost(0.0, phase.decode_floor, None), chip)
  return {"steps": phase.decode_steps, "per_step": _chip_roofline(phase.decode_step, chip),
          "total": total, "floor": floor, "ratio": total.seconds / floor.seconds}


def generated_tokens(plan: "Plan") -> int:
  """Tokens the rollout generates per step, all chips together (0 without a rollout)."""
  if not any(p.name == "rollout" for p in plan.phases):
    return 0
  return plan.config.batch_size * plan.config.rollout.max_new_tokens


def tokens_per_s_per_chip(plan: "Plan") -> dict:
  """Generated tokens per second per chip: `{"rollout": over the rollout's roofline time,
  "step": over the whole step's}` (None where a time is unknown)."""
  per_chip = generated_tokens(plan) / plan.topology.num_devices
  rollout = next((p for p in plan.phases if p.name == "rollout"), None)
  r_s = None if rollout is None else phase_seconds(rollout, plan.topology)[0]
  rate = lambda s: per_chip / s if s and per_chip else None
  return {"rollout": rate(r_s), "step": rate(plan.estimated_step_s)}


def compile_phases(exp, devices, with_cost: bool = True) -> tuple[list, phases.Phase | None]:
  """`(phases, teacher_in_step)`: the step's phases in order (rollout if any, teacher
  scoring for a teacher on its own mesh, train step), and the teacher's share of the train
  step when it runs inside it (None otherwise, or without costs)."""
  teacher = phases.teacher_scoring(exp, devices, with_cost)
  found = [phases.rollout(exp, with_cost), teacher,
           phases.train_step(exp, devices, with_cost, teacher)]
  inside = teacher if teacher is not None and teacher.within else None
  return [p for p in found if p is not None and p is not inside], inside


def _param_count(tree) -> int:
  return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))


def make_plan(config: ml_collections.ConfigDict, topology: Topology, devices: list,
              search: int = 0) -> Plan:
  """Compiles every phase of `config` for `devices` and sizes the run.

  Args:
    config: the experiment config.
    topology: the target (`cmdp.plan.topology.parse`).
    devices: its devices (`cmdp.plan.topology.devices`).
    search: when the config does not fit, how many alternative settings to try at most.
  """
  start = time.perf_counter()
  exp = abstract.abstract_experiment(config, devices)
  found, teacher_in_step = compile_phases(exp, devices)
  shared = shares_devices(exp)
  resident = resident_bytes(exp)
  memory = [phase_memory(p, resident, shared) for p in found]
  timed = [phase_seconds(p, topology) for p in found]
  seconds = None if any(s is None for s, _ in timed) else sum(s for s, _ in timed)
  flops = sum(p.cost.flops for p in found)
  source = ", ".join(sorted({src for _, src in timed}))
  if any(p.program.oom for p in found):  # no compiled program, no cost
    flops, seconds, source = None, None, "none (XLA did not compile every phase)"
  capacity, what = capacity_bytes(topology)
  plan = Plan(
      config=config, topology=topology, mesh=dict(exp.student_mesh.shape),
      teacher_mesh=dict(exp.teacher_mesh.shape), grad_accum_steps=config.grad_accum_steps,
      param_counts={"teacher": _param_count(exp.teacher.params),
                    "student": _param_count(exp.student.params)},
      phases=found, memory=memory, capacity=capacity, capacity_what=what,
      flops_per_step=flops, estimated_step_s=seconds,
      model_flops=sum(flops_lib.step_flops(exp).values()) / topology.num_devices,
      time_source=source,
      compile_s=0.0, teacher_in_step=teacher_in_step)
  if not plan.fits and search > 0:
    plan.alternatives = search_alternatives(plan, devices, search)
  plan.compile_s = time.perf_counter() - start
  return plan


# ---- alternatives ----

def _meshes(n: int, base: dict) -> list[dict]:
  """(data, fsdp, tensor) factorisations of n devices, tensor <= 8, most FSDP first."""
  out = []
  for tensor in (1, 2, 4, 8):
    for data in (1, 2, 4, 8):
      if n % (tensor * data) == 0:
        mesh = {"data": data, "fsdp": n // (tensor * data), "tensor": tensor}
        if mesh != base:
          out.append(mesh)
  return sorted(out, key=lambda m: (m["data"], m["tensor"]))


def _accum_options(config, shards: int) -> list[int]:
  """Larger grad_accum_steps that split the batch into whole groups, whole rows per device."""
  b, g = config.batch_size, config.rollout.group_size
  return [a for a in (2 ** k for k in range(1, 12))
          if a > config.grad_accum_steps and b % (a * g) == 0 and (b // a) % shards == 0]


def _candidates(plan: Plan) -> list[tuple[dict, int]]:
  """Settings to try, the likeliest first: more accumulation when the update is the peak,
  then meshes (each with the config's accumulation)."""
  n = plan.topology.num_devices
  shards = plan.mesh["data"] * plan.mesh["fsdp"]
  accum = [(plan.mesh, a) for a in _accum_options(plan.config, shards)]
  meshes = [(m, plan.grad_accum_steps) for m in _meshes(n, plan.mesh)
            if plan.config.batch_size % (m["data"] * m["fsdp"]) == 0]
  first, second = (accum, meshes) if plan.peak.phase == "train step" else (meshes, accum)
  return list(itertools.chain(first, second))


def _variant(config, mesh: dict, accum: int):
  c = copy.deepcopy(config)
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = mesh["data"], mesh["fsdp"], mesh["tensor"]
  c.grad_accum_steps = accum
  return c


def search_alternatives(plan: Plan, devices: list, budget: int) -> list[Alternative]:
  """Memory of up to `budget` alternative settings (compiled, costs skipped)."""
  out = []
  resident_cache = {}
  for mesh, accum in _candidates(plan)[:budget]:
    config = _variant(plan.config, mesh, accum)
    exp = abstract.abstract_experiment(config, devices)
    if mesh == plan.mesh:  # only the update changes with accumulation
      found = [p for p in plan.phases if p.name != "train step"]
      found.append(phases.train_step(exp, devices, with_cost=False))
    else:
      found, _ = compile_phases(exp, devices, with_cost=False)
    key = tuple(sorted(mesh.items()))
    if key not in resident_cache:
      resident_cache[key] = resident_bytes(exp)
    resident = resident_cache[key]
    memory = [phase_memory(p, resident, shares_devices(exp)) for p in found]
    peak = max(memory, key=lambda m: m.total)
    refused = any(p.program.oom for p in found)
    out.append(Alternative(dict(exp.student_mesh.shape), accum, peak.phase, peak.total,
                           peak.total <= plan.capacity and not refused))
  return out


# ---- the smallest slice ----

def _accum_for(config, shards: int) -> int | None:
  """The largest grad_accum_steps up to the config's whose microbatches are whole groups
  and give each of `shards` row shards whole rows (None: the batch cannot split so)."""
  b, g = config.batch_size, config.rollout.group_size
  for a in range(config.grad_accum_steps, 0, -1):
    if b % (a * g) == 0 and (b // a) % shards == 0:
      return a
  return None


def slice_variant(config: ml_collections.ConfigDict, chips: int):
  """`config` on `chips` chips: its tensor axis kept, fsdp over the rest (data 1), and as
  many microbatches as still give every chip whole rows; None when the batch cannot split."""
  tensor = config.mesh.tensor
  if chips % tensor or config.batch_size % (chips // tensor):
    return None
  fsdp = chips // tensor
  accum = _accum_for(config, fsdp)
  if accum is None:
    return None
  c = _variant(config, {"data": 1, "fsdp": fsdp, "tensor": tensor}, accum)
  c.mesh.num_devices = 0
  return c


def resident_total(config: ml_collections.ConfigDict) -> int:
  """Bytes of the teacher's and student's parameters and the optimiser state, all chips
  together (no device needed): a slice needs at least this much memory."""
  t_cfg, s_cfg = abstract.model_configs(config)
  shapes = lambda cfg: jax.eval_shape(functools.partial(models.init_params, cfg),
                                      jax.random.key(0))
  student = shapes(s_cfg)
  opt = optimizer_lib.make_optimizer(config.optimizer, config.num_steps)
  trees = (shapes(t_cfg), student, jax.eval_shape(opt.init, student))
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(trees))


def smallest_slice(config: ml_collections.ConfigDict, family: Topology,
                   search: int = 0) -> list[tuple[Topology, Plan]]:
  """Plans `config` (`slice_variant`) on the slices of `family`'s chip, smallest first,
  from the first whose memory could hold the resident state, until one fits.

  Returns the `(topology, plan)` pairs tried; the last one fits unless none did.
  """
  chip = family.chip
  if chip is None:
    raise ValueError("the smallest slice is searched over TPU slices; give a TPU topology.")
  need = resident_total(config)
  tried = []
  for chips in chip.chip_counts:
    variant = slice_variant(config, chips)
    if chips * chip.hbm_bytes < need or variant is None:
      continue
    target = topology_lib.parse(f"{family.name.rsplit('-', 1)[0]}-{chips * chip.cores_per_chip}")
    plan = make_plan(variant, target, topology_lib.devices(target), search=search)
    tried.append((target, plan))
    if plan.fits:
      break
  return tried
