r"""Figures the docs quote, written from committed JSON, never retyped.

    python -m cmdp.quote          # rewrites every quoted block from its JSON

A quoted block is the text between a line holding `KIND-quote: PATH [OPTION]` (PATH: a
JSON file, relative to the repository root) and the next line holding `/KIND-quote`, in any
file of `QUOTING` (markdown comments in the docs, plain lines in a config's docstring).
Its lines are the KIND's summary of the JSON, each with the indent of the opening marker:

* `plan`: a planner JSON (`python -m cmdp.plan ... --json PATH`), one paragraph
  (`cmdp.plan.quote.summary`), wrapped; OPTION `short`: two sentences;
* `results`: a study's JSON (`python -m cmdp.study ... --output_dir docs/results`), per
  budget a table and the verdict by the declared rules (`cmdp.study.quote.summary`);
  OPTION `short`: one line per budget; a budget's name (`q50`): that budget's table only.

`tests/test_quote.py` checks every block against its JSON, so a figure in the docs is always
the committed plan's or study's.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import textwrap

from cmdp import cli
from cmdp.plan import quote as plan_quote
from cmdp.study import quote as study_quote


def _plan(payload: dict, option: str) -> str:
  if option not in ("", "short"):
    raise ValueError(f"plan-quote takes the option 'short' or none, not {option!r}.")
  return plan_quote.summary(payload, short=option == "short")


def _results(payload: dict, option: str) -> str:
  budgets = list(payload["decisions"])
  if option not in ("", "short", *budgets):
    raise ValueError(f"results-quote takes the option 'short', a budget of the study "
                     f"({', '.join(budgets)}) or none, not {option!r}.")
  return study_quote.summary(payload, short=option == "short",
                             only=option if option in budgets else None)


# KIND: (summary(payload, option) -> text, whether its text is one paragraph to wrap)
KINDS = {"plan": (_plan, True), "results": (_results, False)}
QUOTING = ("README.md", "docs/performance.md", "docs/planner.md", "configs/qwen_math.py",
           "configs/llama_math.py")
_OPEN = re.compile(r"^(?P<indent>\s*)(?:<!-- )?(?P<kind>" + "|".join(KINDS) +
                   r")-quote: (?P<path>\S+?)(?: (?P<option>(?!-->)\S+))?(?: -->)?\s*$")


def _close(kind: str) -> re.Pattern:
  return re.compile(rf"^\s*(?:<!-- )?/{kind}-quote(?: -->)?\s*$")


def quoted_blocks(text: str) -> list[tuple[int, int, str, str, str, str]]:
  """`(first line, end line, kind, json path, indent, option or "")` of each quoted block (line
  indices of the block's own lines, between its markers); raises on an unclosed block."""
  lines, out, i = text.split("\n"), [], 0
  while i < len(lines):
    m = _OPEN.match(lines[i])
    if m:
      close = _close(m["kind"])
      end = next((j for j in range(i + 1, len(lines)) if close.match(lines[j])), None)
      if end is None:
        raise ValueError(f"line {i + 1}: '{m['kind']}-quote: {m['path']}' has no "
                         f"'/{m['kind']}-quote'.")
      out.append((i + 1, end, m["kind"], m["path"], m["indent"], m["option"] or ""))
      i = end
    i += 1
  return out


def block_lines(kind: str, payload: dict, indent: str, option: str, width: int) -> list[str]:
  """The lines of one block: the KIND's summary (with the block's option), wrapped to
  `width` if it is a paragraph, each line with `indent` (empty lines stay empty)."""
  fn, wrap = KINDS[kind]
  text = fn(payload, option)
  if wrap:
    return textwrap.wrap(text, width=width, initial_indent=indent, subsequent_indent=indent,
                         break_on_hyphens=False)
  return [indent + line if line else "" for line in text.split("\n")]


def render(text: str, root: str, width: int = 90) -> str:
  """`text` with every quoted block rewritten from its JSON under `root`."""
  lines = text.split("\n")
  for first, end, kind, path, indent, option in reversed(quoted_blocks(text)):
    full = os.path.join(root, path)
    if not os.path.exists(full):
      raise FileNotFoundError(f"a '{kind}-quote' block names {path}, which does not exist "
                              f"under {root}; write it first or remove the block.")
    with open(full) as f:
      payload = json.load(f)
    lines[first:end] = block_lines(kind, payload, indent, option, width)
  return "\n".join(lines)


def main(argv: list[str]) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m cmdp.quote", formatter_class=argparse.RawDescriptionHelpFormatter,
      description="Rewrites every quoted block (plan figures, study results) in "
      + ", ".join(QUOTING) + " from the JSON it names.",
      epilog="Example:\n  python -m cmdp.plan --config configs/qwen_math.py --topology v5e-8 "
      "--json docs/plans/qwen_math_v5e-8.json\n  python -m cmdp.quote")
  parser.add_argument("--root", default=".", help="The repository root (default: .).")
  root = parser.parse_args(argv[1:]).root
  missing = [n for n in QUOTING if not os.path.exists(os.path.join(root, n))]
  if missing:
    cli.fail(parser.prog, f"--root={root!r} holds no {missing[0]}; run it from the repository "
             "root or name that with --root.")
  for name in QUOTING:
    path = os.path.join(root, name)
    with open(path) as f:
      text = f.read()
    try:
      new = render(text, root)
    except (ValueError, FileNotFoundError) as err:
      cli.fail(parser.prog, f"{name}: {err}")
    if new != text:
      with open(path, "w") as f:
        f.write(new)
      print(f"{name}: quoted blocks rewritten")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
