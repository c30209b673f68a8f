"""Final-answer extraction and checking for GSM8K-style math problems.

The checker is a task reward inside the training loop, so it must be total and cheap: every
public function here returns (never raises) in bounded time on any string, including
hostile model output (100k characters, deep braces, huge numbers, unicode junk).

How time is bounded, in every thread (math-verify's own timeouts use `signal.alarm`, which
only works in the main thread):

* Completions are cut to their last `MAX_COMPLETION_CHARS` characters before extraction;
  the extracted answer is rejected beyond `MAX_ANSWER_CHARS`, a number beyond
  `MAX_NUMBER_CHARS` digits.
* All regexes here are linear (no ambiguous quantifiers); brace matching is a single scan
  (`cmdp.text.last_boxed`).
* Numbers are parsed by our own grammar into exact `fractions.Fraction`s. math-verify (sympy)
  is only a fallback for answers our grammar cannot read (e.g. `\\sqrt{2}`), and only for
  short strings whose LaTeX commands are on a whitelist, with no words and only single-digit
  exponents, so sympy cannot be asked for anything expensive. In the main thread
  math-verify's signal timeouts are armed as a second guard; elsewhere they are off (they
  cannot work there).
* Any exception gives "no match"; the reason is returned by `check_answer` for logging.
"""
from __future__ import annotations

import fractions
import logging
import re
import threading
from typing import NamedTuple

from cmdp.text import last_boxed

logger = logging.getLogger(__name__)

MAX_COMPLETION_CHARS = 20_000  # only the tail of a completion is searched for its answer
MAX_ANSWER_CHARS = 256  # longer extracted answers are not parsed (reward 0)
MAX_NUMBER_CHARS = 64  # longer digit strings are not parsed (reward 0)
MAX_SYMPY_CHARS = 96  # longest answer handed to math-verify
# A predicted decimal matches within REL_TOL * max(1, |gold|), capped at half its last place.
REL_TOL = fractions.Fraction(1, 10 ** 6)

# An unsigned decimal: plain digits or correctly grouped thousands, optional fraction part.
_NUM = r"(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+"
_SIGN = r"[-+\u2212]?"
# sign, currency, sign (either "-$5" or "$-5"), then the numeric core. Every `\s*` is followed
# by a mandatory token of its group, so whitespace can be split only one way (no backtracking).
_HEAD = rf"(?P<s1>{_SIGN})(?:\s*\\?\$)?(?:\s*(?P<s2>[-+\u2212]))?\s*"
_FRAC_RE = re.compile(
    _HEAD + rf"\\[dt]?frac\s*\{{\s*(?P<n>{_SIGN}\s*(?:{_NUM}))\s*\}}\s*"
    rf"\{{\s*(?P<d>{_SIGN}\s*(?:{_NUM}))\s*\}}")
_MIXED_RE = re.compile(_HEAD + r"(?P<w>\d+)\s+(?P<n>\d+)\s*/\s*(?P<d>\d+)")
_RATIO_RE = re.compile(_HEAD + rf"(?P<n>{_NUM})\s*/\s*(?P<d>{_NUM})")
_DECIMAL_RE = re.compile(_HEAD + rf"(?P<n>{_NUM})")
_ANY_NUMBER_RE = re.compile(rf"(?<![\d.])-?\$?(?:{_NUM})(?!\d)")
_TEXT_CMD_RE = re.compile(r"\\(?:text|textbf|mbox|mathrm|mathbf|textrm)\s*\{([^{}]*)\}")
_SPACING_RE = re.compile(r"\\(?:left|right|displaystyle|[!,;: ])")
_PERCENT_RE = re.compile(r"^(?:\\?%|percent\b)")
_UNIT_RE = re.compile(r"^(?:\s+[^\W\d_]|[^\W\d_]{2})")  # " word..." or an attached word
_TRAILING_JUNK = " \t\n.,;:!)]$"

# math-verify fallback: the LaTeX commands we let sympy see.
_SAFE_COMMANDS = frozenset(
    "frac dfrac tfrac sqrt pi cdot times div left right text mathrm circ degree pm".split())
_COMMAND_RE = re.compile(r"\\([A-Za-z]+)")
_WORD_RE = re.compile(r"[A-Za-z]{2}")  # two letters in a row outside a LaTeX command
_POWER_RE = re.compile(r"\^\s*(?:\{\s*-?\d\s*\}|-?\d(?!\d))")


class Number(NamedTuple):
  """A parsed numeric answer.

  value: the exact rational the text denotes.
  is_percent: written with `%` / `percent` (then value/100 is also accepted).
  places: digits after the decimal point as written (`2.50` -> 2; `3`, `3/4` -> 0). A
    decimal with `places > 0` may be a rounding, so it also matches any number that rounds to
    it (see `numbers_match`); integers and fractions must match exactly.
  """
  value: fractions.Fraction
  is_percent: bool
  places: int


class Check(NamedTuple):
  """Outcome of comparing one predicted answer with one gold answer."""
  correct: bool
  reason: str  # how the decision was made, or why it failed (for logging)


def extract_answer(text: str) -> str | None:
  """The final answer written in a completion, as a raw string, or None.

  Order: the content of the last `#### ...` line; else the content of the last
  `\\boxed{...}` (or `\\fbox{...}`); else the last number in the text. Only the last
  `MAX_COMPLETION_CHARS` characters are searched.

  Args:
    text: a model completion (or a reference solution).

  Returns:
    The answer text, stripped (e.g. `"1,234.50"`, `"\\frac{3}{4}"`, `"18 dollars"`), or None
    when nothing answer-like is present.
  """
  if not isinstance(text, str):
    return None
  tail = text[-MAX_COMPLETION_CHARS:]
  pos = tail.rfind("####")
  if pos >= 0:
    line = tail[pos + 4:].lstrip(" \t#").split("\n", 1)[0].strip()
    if line:
      return line
  boxed = last_boxed(tail, max_chars=MAX_ANSWER_CHARS)
  if boxed:
    return boxed
  last = None
  for last in _ANY_NUMBER_RE.finditer(tail[-4_000:]):
    pass
  return last.group(0) if last else None


def _clean(s: str) -> str:
  s = _TEXT_CMD_RE.sub(r" \1", s)
  s = _SPACING_RE.sub("", s).replace("{,}", ",").replace("\u00a0", " ")
  s = s.strip()
  for opener, closer in (("\\(", "\\)"), ("\\[", "\\]")):
    if s.startswith(opener) and s.endswith(closer):
      s = s[2:-2].strip()
  return s.lstrip("=: \t")


def _to_fraction(num: str, sign: str = "") -> fractions.Fraction:
  num = num.replace(",", "").replace(" ", "").replace("\u2212", "-")
  if len(num) > MAX_NUMBER_CHARS:
    raise ValueError(f"number longer than {MAX_NUMBER_CHARS} characters")
  value = fractions.Fraction(num)
  return -value if sign in ("-", "\u2212") else value


def parse_number(s: str) -> Number | None:
  """Reads a numeric answer written by a person or a model.

  Accepts thousands separators (`1,234`), currency (`$5`, `-$5`, `\\$5`), decimals (`5.0`),
  fractions (`3/4`, `\\frac{3}{4}`, `2 1/2`), signs (`-`, unicode minus), a trailing period,
  percent (`50%`, `50\\%`, `50 percent`) and unit words after the number (`18 dollars`).
  Rejects anything else after the number (e.g. `3\\sqrt{2}`, `2^3`), so such answers go to
  the symbolic checker instead of being misread.

  Args:
    s: the answer text.

  Returns:
    `Number(value, is_percent, places)` with an exact rational value, or None if `s` is not
    a number.
  """
  if not isinstance(s, str) or len(s) > MAX_ANSWER_CHARS:
    return None
  s = _clean(s)
  try:
    for regex in (_FRAC_RE, _MIXED_RE, _RATIO_RE, _DECIMAL_RE):
      m = regex.match(s)
      if not m:
        continue
      if regex is _DECIMAL_RE and s[m.end():m.end() + 1].isdigit():
        return None  # "12 34": two numbers, not one
      sign = "-" if (m["s1"] in ("-", "\u2212")) != (m["s2"] in ("-", "\u2212")) else ""
      g = m.groupdict()
      value = _to_fraction(g["n"])
      if g.get("d") is not None:
        value /= _to_fraction(g["d"])
      if g.get("w") is not None:
        value += _to_fraction(g["w"])
      value = -value if sign else value
      places = _decimal_places(g["n"]) if regex is _DECIMAL_RE else 0
      rest = s[m.end():].rstrip(_TRAILING_JUNK)
      if _PERCENT_RE.match(rest.lstrip()):
        return Number(value, True, places)
      if not rest or _UNIT_RE.match(rest):
        return Number(value, False, places)
      return None
  except (ValueError, ZeroDivisionError, ArithmeticError):
    return None
  return None


def _decimal_places(num: str) -> int:
  """Digits after the decimal point of a written number (`"1,234.50"` -> 2)."""
  return len(num.partition(".")[2].strip())


def numbers_match(pred: Number, gold: Number) -> bool:
  """Numeric equality of two `parse_number` results.

  The gold is exact. Integers and fractions match only exactly (`1450001` is not
  `1450000`). A predicted decimal written with `k > 0` places may be a rounding, so it
  matches a gold within `min(REL_TOL * max(1, |g|), 0.5 * 10^-k)`: the relative tolerance
  of a long expansion (`0.3333333` matches 1/3, `0.333` does not), never more than half a
  unit of its last written place (`1450001.0` does not match 1450000). A percent on either
  side may also be read as a fraction of 100 (`50%` matches 50 and 0.5).
  """
  def readings(n: Number):
    out = [(n.value, n.places)]
    if n.is_percent:
      out.append((n.value / 100, n.places + 2 if n.places else 0))
    return out

  for p, places in readings(pred):
    for g, _ in readings(gold):
      if p == g:
        return True
      if places and abs(p - g) <= min(REL_TOL * max(1, abs(g)),
                                      fractions.Fraction(1, 2 * 10 ** places)):
        return True
  return False


def _sympy_safe(s: str) -> bool:
  """Whether `s` is small and tame enough to hand to sympy without a timeout."""
  if len(s) > MAX_SYMPY_CHARS or not s.isascii() or "!" in s.replace("\\!", ""):
    return False
  if "**" in s:
    return False
  if not all(cmd in _SAFE_COMMANDS for cmd in _COMMAND_RE.findall(s)):
    return False
  if _WORD_RE.search(_COMMAND_RE.sub(" ", s)):
    return False  # prose ("the answer is five") is slow to parse and never a math answer
  if s.count("^") != len(_POWER_RE.findall(s)):
    return False  # only single-digit exponents
  if max((len(m) for m in re.findall(r"\d+", s)), default=0) > 24:
    return False
  depth = 0
  for ch in s:
    depth += ch == "{"
    depth -= ch == "}"
    if depth > 6 or depth < 0:
      return False
  return depth == 0


def _math_verify_match(pred: str, gold: str) -> Check:
  """Symbolic comparison with math-verify, for answers our number grammar cannot read."""
  pred, gold = _clean(pred).strip("$ "), _clean(gold).strip("$ ")
  if not (_sympy_safe(pred) and _sympy_safe(gold)):
    return Check(False, "not a number, nor a short expression the symbolic checker accepts")
  from math_verify import parse, verify  # pylint: disable=g-import-not-at-top
  quiet_math_verify_timeout_warning()
  # Signal-based timeouts only work in the main thread; elsewhere `_sympy_safe` bounds time.
  seconds = 2 if threading.current_thread() is threading.main_thread() else None
  gold_expr = parse(f"${gold}$", parsing_timeout=seconds)
  pred_expr = parse(f"${pred}$", parsing_timeout=seconds)
  if not gold_expr or not pred_expr:
    return Check(False, "symbolic checker could not parse the answer")
  ok = bool(verify(gold_expr, pred_expr, timeout_seconds=seconds))
  return Check(ok, "math_verify")


class _DropTimeoutWarning(logging.Filter):

  def filter(self, record: logging.LogRecord) -> bool:
    return "Timeout is disabled" not in record.getMessage()


_FILTER_INSTALLED = []


def quiet_math_verify_timeout_warning():
  """math-verify warns when its timeout is off; here time is bounded by `_sympy_safe`."""
  if not _FILTER_INSTALLED:
    for name in ("math_verify.parser", "math_verify.grader"):
      logging.getLogger(name).addFilter(_DropTimeoutWarning())
    _FILTER_INSTALLED.append(True)


def screen_answer_pair(pred: str | None, gold: str, max_chars: int, *,
                       cap_gold: bool = False) -> Check | None:
  """The input guard of the answer checkers: rejects pairs that cannot be compared.

  Args:
    pred: the extracted predicted answer, or None.
    gold: the gold answer.
    max_chars: longest answer compared.
    cap_gold: apply `max_chars` to `gold` too (else only to `pred`).

  Returns:
    `Check(False, reason)` when `pred` is None, either is not a string, or an answer is
    longer than `max_chars`; None when the pair may be compared.
  """
  if pred is None:
    return Check(False, "no answer found")
  if not isinstance(pred, str) or not isinstance(gold, str):
    return Check(False, f"answers must be strings, got {type(pred).__name__}, "
                        f"{type(gold).__name__}")
  if len(pred) > max_chars or (cap_gold and len(gold) > max_chars):
    return Check(False, f"answer longer than {max_chars} characters")
  return None


def check_answer(pred: str | None, gold: str) -> Check:
  """Compares a predicted final answer with the gold one; never raises.

  Numbers are compared exactly as rationals (a predicted decimal also matches what rounds to
  it, see `numbers_match`); otherwise math-verify decides (bounded, see module doc).

  Args:
    pred: the extracted predicted answer (e.g. from `extract_answer`), or None.
    gold: the gold answer (e.g. `"18"`).

  Returns:
    `Check(correct, reason)`.
  """
  try:
    rejected = screen_answer_pair(pred, gold, MAX_ANSWER_CHARS)
    if rejected is not None:
      return rejected
    gold_num = parse_number(gold)
    pred_num = parse_number(pred)
    if pred_num is None and "=" in pred:  # "x = 5", "3 + 4 = 7"
      pred_num = parse_number(pred.rsplit("=", 1)[1])
    if gold_num is not None and pred_num is not None:
      return Check(numbers_match(pred_num, gold_num), "numeric")
    return _math_verify_match(pred, gold)
  except Exception as e:  # pylint: disable=broad-except
    return Check(False, f"checker error: {type(e).__name__}: {str(e)[:200]}")


def answers_match(pred: str | None, gold: str) -> bool:
  """True when `pred` states the same final answer as `gold` (see `check_answer`)."""
  return check_answer(pred, gold).correct


def math_reward(completion: str, gold_answer: str) -> float:
  """1.0 if the completion's final answer (see `extract_answer`) equals `gold_answer`, else 0.0."""
  return 1.0 if check_answer(extract_answer(completion), gold_answer).correct else 0.0
