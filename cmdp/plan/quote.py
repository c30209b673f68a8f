"""A plan's figures in one paragraph, from the planner's `--json` (`cmdp.quote` writes it
into the docs, never retyped):

    python -m cmdp.plan --config configs/qwen_math.py --topology v5e-8 \
        --json docs/plans/qwen_math_v5e-8.json
    python -m cmdp.quote
"""
from __future__ import annotations


def _s(seconds: float) -> str:
  return f"{seconds:.1f} s" if seconds >= 1 else f"{seconds * 1e3:.0f} ms"


def summary(plan: dict, short: bool = False) -> str:
  """One paragraph of a plan's figures: the slice and layout, the peak, the roofline step
  time by program, the teacher's share of the step's FLOPs, the decode loop against its
  bandwidth floor and the generated tokens per second per chip; `short`: the step time,
  the tokens per second and the decode loop's ratio to its floor only."""
  mesh = plan["mesh"]
  layout = " x ".join(f"{k}={v}" for k, v in mesh.items() if v > 1) or "one device"
  gib = plan["per_device_bytes"]["total"] / 2 ** 30
  hbm = plan["hbm_bytes"] / 2 ** 30
  roof = plan["roofline"]
  parts = []
  for phase, programs in roof["programs"].items():
    for name, r in programs.items():
      label = phase if name == phase else f"{phase} {name}"
      parts.append(f"{label} {_s(r['seconds'])} ({r['bound']}-bound)")
  teacher = plan["teacher_in_train_step"]
  share = ""
  if teacher is not None and teacher["flops"] and plan["flops_per_step"]:
    share = (f" The teacher's forward is {teacher['flops']:.2e} of the step's "
             f"{plan['flops_per_step']:.2e} FLOPs per chip "
             f"({100 * teacher['flops'] / plan['flops_per_step']:.0f}%).")
  loop = roof.get("decode_loop")
  decode = ""
  if loop is not None:
    decode = (f" The decode loop takes {loop['steps']} steps of "
              f"{loop['total']['seconds'] / loop['steps'] * 1e3:.1f} ms, "
              f"{loop['ratio']:.2f} x its bandwidth floor of "
              f"{_s(loop['floor']['seconds'])} (the decode weights every step and the "
              f"attended cache).")
  rates = plan["tokens_per_s_per_chip"]
  if short:
    ratio = "" if loop is None else f"; the decode loop at {loop['ratio']:.2f} x its floor"
    return (f"Planned for `{plan['config']}` on {plan['topology']}: "
            f"{_s(plan['estimated_step_s'])} a step, {rates['rollout']:,.0f} generated "
            f"tokens/s per chip over the rollout{ratio}; peak {gib:.2f} of {hbm:.0f} GiB.")
  return (f"`{plan['config']}` on {plan['topology']} ({plan['num_devices']} chips, "
          f"{layout}, {plan['batch_size']} sequences a step): peak {gib:.2f} GiB of "
          f"{hbm:.0f} GiB per chip ({plan['peak_phase']}); planned step "
          f"{_s(plan['estimated_step_s'])} by the roofline ({'; '.join(parts)})."
          f"{share}{decode} {rates['rollout']:,.0f} generated tokens/s per chip over the "
          f"rollout, {rates['step']:,.0f} over the whole step.")
