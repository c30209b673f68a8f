"""Text helpers shared by the data loaders and the rewards: LaTeX `\\boxed{}` extraction.

The lowest layer: imports nothing from `cmdp`, so `cmdp.data` (reading MATH gold answers) and
`cmdp.rewards` (reading model answers) both use it without importing each other. Total and
bounded, as the rewards need: never raises, one linear scan of at most `max_chars` characters.
"""
from __future__ import annotations

MAX_BOXED_CHARS = 256  # default cap on the content read (bounds the scan)
MAX_BRACE_DEPTH = 16  # deeper \boxed{...} nesting is rejected


def last_boxed(text: str, *, max_chars: int | None = MAX_BOXED_CHARS) -> str | None:
  """Content of the last `\\boxed{...}` or `\\fbox{...}` in `text`, stripped, or None.

  Nested braces are matched; escaped braces (`\\{`, `\\}`) do not count. The brace-less
  form `\\boxed 5` (found in a few MATH solutions) gives the text up to the next `$` or
  line end. Only the last occurrence is read: None when it is unbalanced, nested deeper than
  `MAX_BRACE_DEPTH`, longer than `max_chars`, or empty.

  Args:
    text: a completion or a reference solution.
    max_chars: longest content read (bounds the scan); None reads any length.
  """
  if not isinstance(text, str):
    return None
  start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
  if start < 0:
    return None
  after = start + (6 if text.startswith("\\boxed", start) else 5)
  open_at = after
  while open_at < len(text) and text[open_at] in " \t":
    open_at += 1
  if open_at >= len(text):
    return None
  if text[open_at] != "{":
    if open_at == after:  # "\boxedx": not the command
      return None
    segment = text[open_at:] if max_chars is None else text[open_at:open_at + max_chars + 1]
    content = segment.split("$", 1)[0].split("\n", 1)[0].strip().rstrip(".")
    too_long = max_chars is not None and len(content) > max_chars
    return content if content and not too_long else None
  stop = len(text) if max_chars is None else min(len(text), open_at + max_chars + 2)
  depth, i = 0, open_at
  while i < stop:
    ch = text[i]
    if ch == "\\":
      i += 2  # an escaped character, e.g. "\{": never structural
      continue
    if ch == "{":
      depth += 1
      if depth > MAX_BRACE_DEPTH:
        return None
    elif ch == "}":
      depth -= 1
      if depth == 0:
        return text[open_at + 1:i].strip() or None
    i += 1
  return None
