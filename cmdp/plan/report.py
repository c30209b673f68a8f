"""The planner's outputs: a readable text report and a JSON dict."""
from __future__ import annotations

from cmdp.plan import planner
from cmdp.plan.planner import Plan
from cmdp.training.config import param_dtypes

GIB = float(1 << 30)
_UNITS = (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10))
_ROWS = (("student params", "student_params"), ("optimizer state", "optimizer"),
         ("teacher params", "teacher_params"), ("KV cache", "kv_cache"),
         ("temporaries", "temp"), ("inputs/outputs", "io"), ("total", "total"))


def _gib(n: int) -> str:
  return f"{n / GIB:.2f}"


def _unit(largest: int) -> tuple[str, int]:
  """The largest unit in which `largest` is at least 1 (tables of tiny models stay legible)."""
  return next(((name, size) for name, size in _UNITS if largest >= size), ("bytes", 1))


def _count(n: int) -> str:
  """A parameter count: 7.62B, 1.54B, 81.0k."""
  for suffix, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
    if n >= size:
      return f"{n / size:.3g}{suffix}"
  return str(n)


def _mesh(mesh: dict) -> str:
  return " ".join(f"{k}={v}" for k, v in mesh.items())


def _seconds(s: float | None) -> str:
  return "n/a" if s is None else f"{s:.3g} s"


def kv_cache_bytes(plan: Plan) -> int:
  return max((p.kv_cache for p in plan.phases), default=0)


def to_text(plan: Plan, config_name: str) -> str:
  """The report printed by `python -m cmdp.plan`."""
  t, c = plan.topology, plan.config
  where = (f"{t.num_devices} x TPU {t.chip.kind} chips, compiled for {t.desc_name}" if t.chip
           else f"{t.num_devices} simulated CPU devices")
  s_cfg = _count(plan.param_counts["student"])
  t_store, s_store = param_dtypes(c)
  t_cfg = _count(plan.param_counts["teacher"])
  unit, size = _unit(plan.peak.total)
  teacher_mesh = ("the same mesh" if plan.teacher_mesh == plan.mesh
                  else _mesh(plan.teacher_mesh))
  if plan.teacher_in_step is not None:
    teacher_mesh += ", inside the train step (per microbatch)"
  lines = [
      f"cmdp plan: {config_name} on {t.name} ({where})",
      f"models   teacher {t_cfg} params (stored {t_store}, computed {c.teacher.dtype}), "
      f"student {s_cfg} params (stored {s_store}, computed {c.student.dtype}"
      f"{', remat' if c.student.remat else ''}), objective {c.objective}",
      f"mesh     student {_mesh(plan.mesh)}; teacher {teacher_mesh}",
      f"step     {c.batch_size} sequences ({c.batch_size // c.rollout.group_size} prompts x "
      f"{c.rollout.group_size}), prompts {c.data.max_prompt_len} + "
      f"{c.rollout.max_new_tokens} new tokens, grad_accum_steps={c.grad_accum_steps}",
      "",
      f"{f'per device ({unit})':<18}" + "".join(f"{m.phase:>17}" for m in plan.memory),
  ]
  for label, key in _ROWS:
    lines.append(f"  {label:<16}" +
                 "".join(f"{getattr(m, key) / size:>17.2f}" for m in plan.memory))
  peak = plan.peak
  verdict = "fits" if plan.fits else "DOES NOT FIT"
  lines += [
      "",
      f"memory   peak {peak.total / size:.2f} {unit} ({peak.phase}) of {_gib(plan.capacity)} GiB "
      f"{plan.capacity_what}: {verdict}",
  ]
  lines += _buffers_text(plan)
  for p in plan.refused:
    lines.append(f"         {p.name}: XLA did not compile it ({p.program.oom}); its figures "
                 "are lower bounds")
  lines += [
      _cost_line(plan),
      "         " + ", ".join(f"{p.name} {_seconds(s)}" for p, s in _phase_seconds(plan))
      + _teacher_share_text(plan),
  ]
  lines += _roofline_text(plan)
  lines += [
      f"compiled in {plan.compile_s:.0f} s",
  ]
  lines += _alternatives_text(plan)
  return "\n".join(lines)


def smallest_text(tried: list) -> str:
  """One line per slice `planner.smallest_slice` planned, then the answer."""
  lines = ["smallest slice: planned, smallest first"]
  for topology, plan in tried:
    m = plan.mesh
    lines.append(f"  {topology.name:<12} mesh data={m['data']} fsdp={m['fsdp']} "
                 f"tensor={m['tensor']}, grad_accum_steps={plan.grad_accum_steps}: peak "
                 f"{_gib(plan.peak.total)} GiB ({plan.peak.phase}) of {_gib(plan.capacity)}: "
                 f"{'fits' if plan.fits else 'does not fit'}")
  last_topology, last = tried[-1]
  lines.append(f"answer   {last_topology.name}" if last.fits else
               "answer   none of these fits")
  return "\n".join(lines + [""])


def _buffers_text(plan: Plan) -> list[str]:
  """The peak phase's largest live buffers (XLA's schedule at its peak), one line each."""
  phase = next(p for p in plan.phases if p.name == plan.peak.phase)
  if not phase.program.buffers:
    return []
  unit, size = _unit(phase.program.buffers[0].bytes)
  out = [f"         largest buffers live at the {phase.name}'s peak (per device):"]
  for b in phase.program.buffers:
    count = f" x{b.count}" if b.count > 1 else ""
    out.append(f"         {b.bytes / size:8.3f} {unit}  {b.shape}{count}  {b.what}")
  return out


def _phase_seconds(plan: Plan):
  from cmdp.plan.planner import phase_seconds  # pylint: disable=g-import-not-at-top
  return [(p, None if p.program.oom else phase_seconds(p, plan.topology)[0])
          for p in plan.phases]


def _teacher_share(plan: Plan) -> float | None:
  """Seconds of the teacher's forward inside the train step (None if not inside or unknown)."""
  from cmdp.plan.planner import phase_seconds  # pylint: disable=g-import-not-at-top
  t = plan.teacher_in_step
  return None if t is None or t.program.oom else phase_seconds(t, plan.topology)[0]


def _teacher_share_text(plan: Plan) -> str:
  if plan.teacher_in_step is None:
    return ""
  return f" (of which the teacher's forward {_seconds(_teacher_share(plan))})"


def _cost_line(plan: Plan) -> str:
  if plan.flops_per_step is None:
    return f"cost     n/a: {plan.time_source}"
  return (f"cost     {plan.flops_per_step:.3e} FLOPs per device per step "
          f"({plan.flops_per_step / plan.model_flops:.2f} x the models' matmul FLOPs, "
          f"{plan.model_flops:.3e}); estimated {_seconds(plan.estimated_step_s)} per step "
          f"({plan.time_source})")


def _rate(x: float | None) -> str:
  return "n/a" if x is None else f"{x:,.0f}"


def _roofline_text(plan: Plan) -> list[str]:
  """Per program: its roofline time and which bound applies; the decode loop; tokens/s."""
  chip = plan.topology.chip
  if chip is None:
    return []
  out = [f"roofline per program (per chip: FLOPs / {chip.peak_flops / 1e12:.0f} TFLOP/s vs "
         f"bytes accessed / {chip.hbm_bandwidth / 1e9:.0f} GB/s):"]
  for p in plan.phases:
    parts = planner.phase_rooflines(p, plan.topology)
    if parts is None:
      out.append(f"         {p.name}: n/a (XLA did not compile it)")
      continue
    for name, r in parts.items():
      label = name if name == p.name else f"{p.name} {name}"
      out.append(f"         {label:<18} {_seconds(r.seconds):>9}  {r.bound}-bound "
                 f"({r.flops:.3e} FLOPs: {r.compute_s:.3g} s; {r.bytes_accessed:.3e} bytes: "
                 f"{r.memory_s:.3g} s)")
  loop = planner.decode_loop(plan)
  if loop is not None:
    step, total, floor = loop["per_step"], loop["total"], loop["floor"]
    out.append(f"         decode loop: {loop['steps']} steps, {total.seconds / loop['steps'] * 1e3:.3g} "
               f"ms a step ({step.seconds * 1e3:.3g} ms at the whole cache); bandwidth floor "
               f"{_seconds(floor.seconds)} ({floor.bytes_accessed:.3e} bytes: the decode weights "
               f"every step, the attended cache): planned {loop['ratio']:.2f} x the floor")
  rates = planner.tokens_per_s_per_chip(plan)
  if planner.generated_tokens(plan):
    out.append(f"tokens   {planner.generated_tokens(plan):,} generated per step: "
               f"{_rate(rates['rollout'])} tokens/s per chip over the rollout, "
               f"{_rate(rates['step'])} over the whole step")
  return out


def _roofline_json(plan: Plan) -> dict | None:
  chip = plan.topology.chip
  if chip is None:
    return None
  as_dict = lambda r: {"seconds": r.seconds, "bound": r.bound, "flops": r.flops,
                       "bytes_accessed": r.bytes_accessed, "compute_s": r.compute_s,
                       "memory_s": r.memory_s}
  loop = planner.decode_loop(plan)
  return {
      "peak_flops": chip.peak_flops, "hbm_bytes_per_s": chip.hbm_bandwidth,
      "programs": {p.name: (None if (parts := planner.phase_rooflines(p, plan.topology)) is None
                            else {k: as_dict(r) for k, r in parts.items()})
                   for p in plan.phases},
      "decode_loop": None if loop is None else {
          "steps": loop["steps"], "ratio": loop["ratio"],
          **{k: as_dict(loop[k]) for k in ("per_step", "total", "floor")}},
  }


def _alternatives_text(plan: Plan) -> list[str]:
  if plan.fits or not plan.alternatives:
    return [] if plan.fits else ["no alternatives searched (--search=0)"]
  fitting = [a for a in plan.alternatives if a.fits]
  out = ["", f"alternatives tried (memory only): {len(plan.alternatives)}, "
         f"{len(fitting)} fit{'' if fitting else ' (raise the slice size or lower batch_size)'}"]
  for a in plan.alternatives:
    out.append(f"  {'fits' if a.fits else '    '}  --config.mesh.data={a.mesh['data']} "
               f"--config.mesh.fsdp={a.mesh['fsdp']} --config.mesh.tensor={a.mesh['tensor']} "
               f"--config.grad_accum_steps={a.grad_accum_steps}: peak {_gib(a.peak_bytes)} GiB "
               f"({a.peak_phase})")
  return out


def to_json(plan: Plan, config_name: str) -> dict:
  """The `--json` dict. `per_device_bytes` describes the peak phase, except `kv_cache`,
  which is the rollout's cache (part of the total only when the rollout is the peak)."""
  peak = plan.peak
  t = plan.topology
  return {
      "config": config_name,
      "topology": t.name,
      "platform": t.platform,
      "chip": t.chip.kind if t.chip else None,
      "topology_desc": t.desc_name,
      "num_devices": t.num_devices,
      "mesh": plan.mesh,
      "teacher_mesh": plan.teacher_mesh,
      "grad_accum_steps": plan.grad_accum_steps,
      "batch_size": plan.config.batch_size,
      "param_counts": plan.param_counts,
      "param_dtypes": dict(zip(("teacher", "student"), param_dtypes(plan.config))),
      "per_device_bytes": {
          "student_params": peak.student_params, "optimizer": peak.optimizer,
          "teacher_params": peak.teacher_params, "kv_cache": kv_cache_bytes(plan),
          "temp": peak.temp, "io": peak.io, "total": peak.total},
      "peak_phase": peak.phase,
      "peak_buffers": [
          {"bytes": b.bytes, "count": b.count, "shape": b.shape, "what": b.what}
          for p in plan.phases if p.name == peak.phase for b in p.program.buffers],
      "hbm_bytes": t.chip.hbm_bytes if t.chip else None,
      "capacity_bytes": plan.capacity,
      "capacity_what": plan.capacity_what,
      "fits": plan.fits,
      "flops_per_step": plan.flops_per_step,
      "model_matmul_flops_per_step": plan.model_flops,
      "estimated_step_s": plan.estimated_step_s,
      "time_source": plan.time_source,
      "roofline": _roofline_json(plan),
      "generated_tokens_per_step": planner.generated_tokens(plan),
      "tokens_per_s_per_chip": planner.tokens_per_s_per_chip(plan),
      "phases": {
          p.name: {**{k: getattr(m, k) for _, k in _ROWS}, "flops": p.cost.flops,
                   "bytes_accessed": p.cost.bytes_accessed, "xla_optimal_seconds": p.cost.seconds,
                   "xla_refused": p.program.oom}
          for p, m in zip(plan.phases, plan.memory)},
      "teacher_in_train_step": None if plan.teacher_in_step is None else {
          "flops": plan.teacher_in_step.cost.flops,
          "xla_optimal_seconds": plan.teacher_in_step.cost.seconds,
          "estimated_s": _teacher_share(plan)},
      "alternatives": [
          {"mesh": a.mesh, "grad_accum_steps": a.grad_accum_steps, "peak_phase": a.peak_phase,
           "peak_bytes": a.peak_bytes, "fits": a.fits} for a in plan.alternatives],
      "compile_s": plan.compile_s,
  }
