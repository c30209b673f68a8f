r"""Plan figures quoted in the docs, written from the planner's `--json`, never retyped.

    python -m cmdp.plan --config configs/qwen_math.py --topology v5e-8 \
        --json docs/plans/qwen_math_v5e-8.json
    python -m cmdp.plan.quote          # rewrites every quoted block from its JSON

A quoted block is the text between a line holding `plan-quote: PATH [short]` (PATH: a plan
JSON, relative to the repository root) and the next line holding `/plan-quote`, in any file
of `QUOTING` (markdown comments in the docs, plain lines in a config's docstring). Its lines
are `summary(json, short)`, wrapped, each with the indent of the opening marker.
`tests/test_plan.py` checks every block against its JSON, so a figure in the docs is
always the committed plan's.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import textwrap

QUOTING = ("README.md", "docs/performance.md", "docs/planner.md", "configs/qwen_math.py",
           "configs/llama_math.py")
_OPEN = re.compile(r"^(?P<indent>\s*)(?:<!-- )?plan-quote: (?P<path>\S+?)(?P<short> short)?"
                   r"(?: -->)?\s*$")
_CLOSE = re.compile(r"^\s*(?:<!-- )?/plan-quote(?: -->)?\s*$")


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


def _block_lines(text: str, indent: str, width: int) -> list[str]:
  return textwrap.wrap(text, width=width, initial_indent=indent, subsequent_indent=indent,
                       break_on_hyphens=False)


def quoted_blocks(text: str) -> list[tuple[int, int, str, str, bool]]:
  """`(first line, end line, json path, indent, short)` of each quoted block (line indices
  of the block's own lines, between its markers); raises on an unclosed block."""
  lines, out, i = text.split("\n"), [], 0
  while i < len(lines):
    m = _OPEN.match(lines[i])
    if m:
      end = next((j for j in range(i + 1, len(lines)) if _CLOSE.match(lines[j])), None)
      if end is None:
        raise ValueError(f"line {i + 1}: 'plan-quote: {m['path']}' has no '/plan-quote'.")
      out.append((i + 1, end, m["path"], m["indent"], bool(m["short"])))
      i = end
    i += 1
  return out


def render(text: str, root: str, width: int = 90) -> str:
  """`text` with every quoted block rewritten from its JSON under `root`."""
  lines = text.split("\n")
  for first, end, path, indent, short in reversed(quoted_blocks(text)):
    with open(os.path.join(root, path)) as f:
      plan = json.load(f)
    lines[first:end] = _block_lines(summary(plan, short), indent, width)
  return "\n".join(lines)


def main(argv: list[str]) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m cmdp.plan.quote", formatter_class=argparse.RawDescriptionHelpFormatter,
      description="Rewrites every quoted plan block (README.md, docs/performance.md, "
      "docs/planner.md, configs/qwen_math.py, configs/llama_math.py) from the plan JSON it "
      "names.",
      epilog="Example:\n  python -m cmdp.plan --config configs/qwen_math.py --topology v5e-8 "
      "--json docs/plans/qwen_math_v5e-8.json\n  python -m cmdp.plan.quote")
  parser.add_argument("--root", default=".", help="The repository root (default: .).")
  root = parser.parse_args(argv[1:]).root
  for name in QUOTING:
    path = os.path.join(root, name)
    with open(path) as f:
      text = f.read()
    new = render(text, root)
    if new != text:
      with open(path, "w") as f:
        f.write(new)
      print(f"{name}: quoted plans rewritten")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
