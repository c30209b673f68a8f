"""What fills a compiled program's peak: its largest live buffers, with shapes and names.

XLA writes, when asked to dump a compilation (`xla_dump_to`), the schedule's live ranges
(`*after_optimizations-live-range.txt`, ending with the buffers live at the peak and their
bytes) and the optimised HLO (`*after_optimizations.txt`: each instruction's shape and the
jax operation it came from, `metadata={op_name=...}`). `peak_buffers(dump_dir)` joins the
two: the buffers live at the peak of the module with the largest peak, grouped by shape
and origin, largest first.

    with tempfile.TemporaryDirectory() as d:
      compiled = lowered.compile(compiler_options={"xla_dump_to": d})
      top = peak_buffers(d)
"""
from __future__ import annotations

import collections
import dataclasses
import glob
import os
import re

_PEAK = re.compile(r"Live ranges at \d+ \(peak\):\n((?:    .*\n?)*)")
_LIVE = re.compile(r"^    (\S+?)\{([\d,]*)\}: (\d+) bytes", re.M)
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*)$")
_OP_NAME = re.compile(r'op_name="([^"]*)"')


@dataclasses.dataclass(frozen=True)
class Buffer:
  """Buffers of one shape and origin live at a program's peak (per device).

  bytes: their bytes together; count: how many; shape: the HLO shape (`bf16[4,1023,1536]`);
  what: the jax operation that made them (its name scope, shortened), or the argument's
  name for a parameter of the program.
  """
  bytes: int
  count: int
  shape: str
  what: str


def _split_tuple(shape: str) -> list[str]:
  """Element shapes of an HLO tuple shape `(f32[2], (s32[], bf16[3]))`, top level only."""
  inner, parts, depth, start = shape[1:-1], [], 0, 0
  for i, ch in enumerate(inner):
    depth += ch in "([{"
    depth -= ch in ")]}"
    if ch == "," and depth == 0:
      parts.append(inner[start:i].strip())
      start = i + 1
  parts.append(inner[start:].strip())
  return parts


def _leading_shape(rest: str) -> str:
  """The shape at the start of an instruction's right-hand side (a tuple kept whole)."""
  if not rest.startswith("("):
    return rest.split(" ", 1)[0]
  depth = 0
  for i, ch in enumerate(rest):
    depth += ch == "("
    depth -= ch == ")"
    if depth == 0:
      return rest[:i + 1]
  return rest


def _without_layout(shape: str) -> str:
  return re.sub(r"\{[^{}]*\}", "", shape)


def _short(op_name: str) -> str:
  """The last three parts of a jax name scope, without the outer `jit(...)`."""
  parts = [p for p in op_name.split("/") if p and not p.startswith("jit(")]
  return "/".join(parts[-3:]) if parts else op_name


def _instructions(hlo_text: str) -> dict[str, tuple[str, str]]:
  """Instruction name -> (shape, what) for every instruction of an HLO text."""
  out = {}
  for line in hlo_text.splitlines():
    m = _INSTR.match(line)
    if not m:
      continue
    name, rest = m.groups()
    shape = _leading_shape(rest)
    op = _OP_NAME.search(rest)
    what = _short(op.group(1)) if op else ("argument" if " parameter(" in rest else name)
    if " parameter(" in rest and op:
      what = f"argument {op.group(1)}"
    out[name] = (shape, what)
  return out


def _peak_of(path: str) -> list[tuple[str, str, int]]:
  """(instruction, shape index, bytes) live at the peak of one live-range file."""
  with open(path) as f:
    m = _PEAK.search(f.read())
  return _LIVE.findall(m.group(1)) if m else []


def peak_buffers(dump_dir: str, top: int = 8) -> tuple[Buffer, ...]:
  """The `top` largest groups of buffers live at the peak (see the module docstring);
  () when the directory holds no live-range dump."""
  best, best_total = None, -1
  for path in glob.glob(os.path.join(dump_dir, "*after_optimizations-live-range.txt")):
    live = _peak_of(path)
    total = sum(int(b) for _, _, b in live)
    if total > best_total:
      best, best_total = (path, live), total
  if best is None:
    return ()
  path, live = best
  hlo = path.replace("-live-range.txt", ".txt")
  instructions = {}
  if os.path.exists(hlo):
    with open(hlo) as f:
      instructions = _instructions(f.read())
  groups = collections.defaultdict(lambda: [0, 0])
  for name, index, size in live:
    shape, what = instructions.get(name, ("?", name))
    if shape.startswith("(") and index:
      for i in index.split(","):
        elements = _split_tuple(shape)
        shape = elements[int(i)] if int(i) < len(elements) else shape
    key = (_without_layout(shape), what)
    groups[key][0] += int(size)
    groups[key][1] += 1
  ranked = sorted(groups.items(), key=lambda kv: -kv[1][0])[:top]
  return tuple(Buffer(size, count, shape, what) for (shape, what), (size, count) in ranked)
