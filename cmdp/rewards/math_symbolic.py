"""Final-answer checking for competition math (MATH): `\\boxed{}` answers, symbolic equality.

MATH gold answers are LaTeX: numbers, fractions, radicals, intervals, tuples, sets,
matrices, equations, multiple-choice letters, words. A predicted answer is compared in
order of increasing cost, and the first rule that applies decides:

1. the normalised strings (`normalize_math_answer`) are equal -> correct;
2. both are plain numbers, unit words allowed (`5 inches`) -> exact rational comparison
   (`math_answer.parse_number`);
3. either side is a word answer (`\\text{Evelyn}`, `odd`) -> compare letters and digits,
   case-insensitively (never handed to sympy);
4. otherwise math-verify (sympy) decides: `\\sqrt{2}/2` vs `\\frac{\\sqrt2}{2}`, `x=3` vs `3`,
   `(-\\infty, 3]`, `\\{1, 2\\}` vs `\\{2, 1\\}`, `(x+1)^2` vs `x^2+2x+1`.

Bounded time in every thread. math-verify's own timeouts use `signal.alarm`, which only
works in the main thread; there they are armed (`SIGNAL_TIMEOUT_S`) as a second guard. In
every thread the symbolic step (4) only runs on inputs within caps that keep sympy cheap,
so the same answers get the same reward wherever they are scored:

* before parsing (the LaTeX parser slows down sharply with nesting): at most
  `MAX_SYMBOLIC_CHARS` ASCII characters, LaTeX commands from a whitelist, digit runs of at
  most `MAX_DIGITS`, bracket nesting at most `MAX_NESTING`, at most `MAX_POWERS` `^`;
* after parsing (the parser builds unevaluated trees; simplify / solve evaluate and expand
  them): at most `MAX_NODES` nodes; every number, power and factorial below
  `MAX_LOG10_MAGNITUDE` decimal digits; at most `MAX_GENERATORS` distinct symbols,
  functions and radicals (k); polynomial degree D with C(D + k, k) <= `MAX_EXPANDED_TERMS`
  (the size of the expanded polynomial) for D the degree of gold - prediction over a
  common denominator; equations and inequalities, which math-verify may `solve`, of degree
  at most `MAX_RELATION_DEGREE` in at most `MAX_RELATION_SYMBOLS` variables.

Answers outside the caps score 0 unless they match as strings. Every public function
returns (never raises) on any string; failures give `Check(False, reason)`.
"""
from __future__ import annotations

import functools
import math
import re
import threading
from typing import Any

from cmdp.rewards.math_answer import (MAX_COMPLETION_CHARS, Check, numbers_match, parse_number,
                                      quiet_math_verify_timeout_warning, screen_answer_pair)
from cmdp.text import last_boxed

MAX_MATH_ANSWER_CHARS = 512  # longer extracted answers are not compared (reward 0)
MAX_SYMBOLIC_CHARS = 160  # longest normalised answer handed to math-verify
MAX_DIGITS = 24  # longest digit run handed to math-verify
MAX_NESTING = 6  # deepest bracket nesting ( { [ handed to math-verify
MAX_POWERS = 12  # most '^' in one answer
MAX_NODES = 300  # most sympy nodes in a parsed gold + predicted answer
MAX_LOG10_MAGNITUDE = 3_000  # largest number (in decimal digits) sympy may be asked to build
MAX_GENERATORS = 8  # most distinct symbols / functions / radicals in gold + prediction
MAX_EXPANDED_TERMS = 250  # bound on C(degree + generators, generators)
MAX_RELATION_DEGREE = 4  # highest degree of an equation / inequality (math-verify solves them)
MAX_RELATION_SYMBOLS = 3  # most variables of an equation / inequality
SIGNAL_TIMEOUT_S = 2  # math-verify's own timeout, main thread only

# LaTeX commands math-verify may see (after `normalize_math_answer`).
_SYMBOLIC_COMMANDS = frozenset("""
    frac sqrt pi cdot times div pm mp infty cup cap setminus emptyset varnothing le leq ge geq
    lt gt ne neq in notin approx sin cos tan cot sec csc arcsin arccos arctan sinh cosh tanh
    log ln exp begin end mathbb theta alpha beta gamma delta epsilon varepsilon lambda mu
    phi varphi omega sigma rho tau psi ldots cdots dots i
    """.split())
_MATRIX_ENVS = frozenset({"pmatrix", "bmatrix", "matrix"})

_COMMAND_RE = re.compile(r"\\([A-Za-z]+|.)")  # "\\\\" (a row break) is not a command
_ENV_RE = re.compile(r"\\(?:begin|end)\s*\{([^{}]*)\}")
_DIGITS_RE = re.compile(r"\d+")
_TEXT_CMD_RE = re.compile(
    r"\\(?:text|textbf|textit|textrm|textnormal|textsf|mbox|mathrm|mathbf|mathit|emph)"
    r"\s*\{([^{}]*)\}")
# A unit written as text after a value: "5\text{ cm}", "3 \mbox{ sq units}^2", "\text{cm}".
_UNIT_TAIL_RE = re.compile(
    r"(?<=\S)\s*\\(?:text|mbox|mathrm|textrm|textnormal)\s*\{(?:\s+[A-Za-z]|[A-Za-z]{2})"
    r"[A-Za-z .]*\}(?:\s*\^\s*(?:\{\s*[23]\s*\}|[23]))?\s*$")
_DEGREE_RE = re.compile(r"\^\s*(?:\{\s*\\circ\s*\}|\\circ)|\\circ|\\degree|\u00b0")
_LEFT_RIGHT_RE = re.compile(r"\\(?:left|right)\s*\.|\\(?:left|right|[bB]igg?[lr]?)(?![A-Za-z])")
_SPACE_CMD_RE = re.compile(r"(?<!\\)\\[,;: ]|\\q?quad(?![A-Za-z])|\\displaystyle(?![A-Za-z])|~")
_THOUSANDS_SPACE_RE = re.compile(r"(?<=\d)\\[,;: ](?=\d{3}(?!\d))")  # "10\,000" -> "10000"
_CHOICE_RE = re.compile(r"\(?([A-Ea-e])\)?")
_SPACES_RE = re.compile(r"\s+")
_LOOSE_SPACE_RE = re.compile(r"(?<![A-Za-z0-9]) | (?![A-Za-z0-9])")
_WORD_RE = re.compile(r"[A-Za-z]{3}")
_LONG_WORD_RE = re.compile(r"[A-Za-z]{5}")
_MATH_CHAR_RE = re.compile(r"[0-9+\-*/^=<>_]")
_LONE_LETTER_RE = re.compile(r"(?<![A-Za-z\\])[A-Za-z](?![A-Za-z])")
_POWER_TAIL_RE = re.compile(r"\^\s*(?:\{\s*[23]\s*\}|[23])$")  # "cm^2"
_DIGIT_AFTER_WORD_RE = re.compile(r"[A-Za-z]{2}[^0-9]*[0-9]")
_WHOLE_TEXT_RE = re.compile(
    r"\\(?:text|textbf|textit|textrm|textnormal|textsf|mbox|mathrm|emph)\s*\{[^{}]*[A-Za-z]{2}"
    r"[^{}]*\}")
_ANSWER_IS_RE = re.compile(r"(?:final answer|answer)(?: is|:)", re.IGNORECASE)
_WRAPPERS = (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"))


def extract_math_answer(text: str) -> str | None:
  """The final answer of a MATH-style completion, as raw LaTeX, or None.

  Order: the content of the last `\\boxed{...}` (or `\\fbox{...}`, nested braces matched);
  else the last `#### ...` line; else the last non-blank line, from after its last
  "answer is" / "answer:" if any. Only the last `MAX_COMPLETION_CHARS` characters are
  searched; answers longer than `MAX_MATH_ANSWER_CHARS` are dropped.

  Args:
    text: a model completion (or a reference solution).

  Returns:
    The answer text, stripped (e.g. `"\\frac{\\sqrt{3}}{2}"`, `"(-\\infty, 3]"`), or None.
  """
  if not isinstance(text, str):
    return None
  tail = text[-MAX_COMPLETION_CHARS:]
  boxed = last_boxed(tail, max_chars=MAX_MATH_ANSWER_CHARS)
  if boxed:
    return boxed
  pos = tail.rfind("####")
  if pos >= 0:
    line = tail[pos + 4:].lstrip(" \t#").split("\n", 1)[0].strip()
    if line:
      return line if len(line) <= MAX_MATH_ANSWER_CHARS else None
  stripped = tail.rstrip()
  line = stripped[stripped.rfind("\n") + 1:].strip()[-4 * MAX_MATH_ANSWER_CHARS:]
  last = None
  for last in _ANSWER_IS_RE.finditer(line):
    pass
  if last is not None:
    line = line[last.end():].strip()
  line = line.rstrip(".").strip()
  return line if line and len(line) <= MAX_MATH_ANSWER_CHARS else None


def _closing_brace(s: str, open_at: int) -> int | None:
  """Index of the `}` matching the `{` at `open_at` (escaped braces skipped), or None."""
  depth, i = 0, open_at
  while i < len(s):
    if s[i] == "\\":
      i += 2
      continue
    depth += {"{": 1, "}": -1}.get(s[i], 0)
    if depth == 0:
      return i
    i += 1
  return None


def _strip_wrappers(s: str) -> str:
  """Removes `$...$`, `\\(...\\)`, `\\[...\\]` and a whole-answer `\\boxed{...}`."""
  for _ in range(4):
    before = s
    for opener, closer in _WRAPPERS:
      if len(s) >= len(opener) + len(closer) and s.startswith(opener) and s.endswith(closer):
        s = s[len(opener):len(s) - len(closer)].strip()
    for command in ("\\boxed", "\\fbox"):
      if s.startswith(command) and s[len(command):].lstrip().startswith("{"):
        open_at = s.index("{")
        if _closing_brace(s, open_at) == len(s) - 1:
          s = s[open_at + 1:-1].strip()
    if s == before:
      break
  return s


def normalize_math_answer(answer: str) -> str:
  """A canonical spelling of a MATH answer, for string comparison and parsing.

  Removes math delimiters (`$`, `\\(`, `\\[`) and a whole-answer `\\boxed{}`; `\\dfrac` /
  `\\tfrac` -> `\\frac`; drops `\\left` / `\\right`, spacing commands, `\\displaystyle`,
  dollar signs, degree signs (`30^\\circ` -> `30`), a trailing unit in text
  (`5\\text{ cm}^2` -> `5`) and a trailing period; unwraps `\\text{...}`-like commands;
  reads a lone choice letter (`\\text{(B)}`, `(b)`) as `B`; removes spaces except between
  two letters or digits.

  Args:
    answer: the raw answer, e.g. from `extract_math_answer` or `Example.answer`.

  Returns:
    The normalised string (possibly empty); `""` for a non-string.
  """
  if not isinstance(answer, str):
    return ""
  s = _strip_wrappers(answer.strip())
  s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").replace("\\dbinom", "\\binom")
  s = _THOUSANDS_SPACE_RE.sub("", s).replace("\\!", "").replace("{,}", ",")
  s = _SPACE_CMD_RE.sub(" ", _LEFT_RIGHT_RE.sub("", s))
  s = _DEGREE_RE.sub("", s).replace("\\$", "").replace("$", "").strip().rstrip(".")
  s = re.sub(r"(?<!\\)%", r"\\%", s)
  for _ in range(3):
    s, count = _UNIT_TAIL_RE.subn("", s)
    if not count:
      break
  s = _TEXT_CMD_RE.sub(r"\1", s)
  s = _SPACES_RE.sub(" ", s).strip().rstrip(".").strip()
  s = _LOOSE_SPACE_RE.sub("", s)
  choice = _CHOICE_RE.fullmatch(s)
  if choice and (s.startswith("(") == s.endswith(")")):
    return choice.group(1).upper()
  return s


def _is_text(normalized: str, raw: str) -> bool:
  """Whether an answer is words (`Evelyn`, `\\text{no}`), not mathematics (`3abc`).

  Words: a run of 5+ letters outside LaTeX commands, or of 3+ letters in an answer without
  digits or operators; or a whole answer in `\\text{}` with two letters in a row.
  """
  bare = _COMMAND_RE.sub(" ", _ENV_RE.sub(" ", normalized))
  if _LONG_WORD_RE.search(bare) or (_WORD_RE.search(bare) and not _MATH_CHAR_RE.search(bare)):
    return True
  return bool(_WHOLE_TEXT_RE.fullmatch(_strip_wrappers(raw.strip())))


def _text_key(s: str) -> str:
  return re.sub(r"[^a-z0-9]", "", s.lower())


def _plain_number(s: str):
  """`parse_number(s)` for a number, possibly with unit words (`5 inches`), else None.

  Not numbers here: a factorial (`10!`), a single-letter variable (`3x`), or digits after
  a word (`5 or 6`).
  """
  words = _COMMAND_RE.sub(" ", _POWER_TAIL_RE.sub("", s))
  if "!" in s or _LONE_LETTER_RE.search(s) or _DIGIT_AFTER_WORD_RE.search(words):
    return None  # "10!" is a factorial here, not an exclamation
  return parse_number(s)


def _nesting_depth(s: str) -> int:
  depth = deepest = 0
  for ch in s:
    if ch in "{([":
      depth += 1
      deepest = max(deepest, depth)
    elif ch in "})]":
      depth -= 1
  return deepest


def latex_cap_violation(s: str) -> str | None:
  """Why a normalised answer may not be parsed by math-verify, or None when it may."""
  if len(s) > MAX_SYMBOLIC_CHARS:
    return f"longer than {MAX_SYMBOLIC_CHARS} characters"
  if not s.isascii():
    return "non-ASCII characters"
  bad = sorted({c for c in _COMMAND_RE.findall(s) if c.isalpha()} - _SYMBOLIC_COMMANDS)
  if bad:
    return f"LaTeX command(s) {bad[:3]} not on the whitelist"
  envs = sorted(set(_ENV_RE.findall(s)) - _MATRIX_ENVS)
  if envs:
    return f"LaTeX environment(s) {envs[:3]} not allowed"
  if max((len(d) for d in _DIGITS_RE.findall(s)), default=0) > MAX_DIGITS:
    return f"a number longer than {MAX_DIGITS} digits"
  if _nesting_depth(s) > MAX_NESTING:
    return f"brackets nested deeper than {MAX_NESTING}"
  if s.count("^") > MAX_POWERS or s.count("|") > 4:
    return f"more than {MAX_POWERS} powers or 4 '|'"
  return None


class _TooComplex(Exception):
  pass


class _Budget:
  """What `_walk` has seen of a gold + predicted expression pair."""

  def __init__(self):
    self.nodes = 0
    self.generators: set[Any] = set()
    self.degree = 0  # highest numerator + denominator degree of any subexpression
    self.relation_degree = 0  # the same, over equations and inequalities
    self.relation_symbols = 0  # most free symbols of one equation / inequality


def _add_degrees(parts) -> tuple[int, int]:
  """(numerator, denominator) degrees of a sum over a common denominator."""
  den = sum(d for _, d, _ in parts)
  return max((n - d for n, d, _ in parts), default=0) + den, den


def _walk(node, budget: _Budget, sp) -> tuple[int, int, float]:
  """Degree and size bounds of a parsed expression; raises _TooComplex past a cap.

  Returns `(numerator degree, denominator degree, log10 magnitude)`: the degrees the
  expression has as a rational function once put over a common denominator (what
  sympy's simplify expands), counting symbols, constants, functions, factorials and
  non-integer powers as generators of degree 1; the magnitude bounds the decimal digits of
  any number sympy would build when evaluating it (the parser leaves `2^{999}` or `50!`
  unevaluated).

  Args:
    node: a sympy object (or a matrix, or a plain Python value).
    budget: accumulates node count, generators and the highest degrees seen.
    sp: the sympy module.
  """
  budget.nodes += 1
  if budget.nodes > MAX_NODES:
    raise _TooComplex(f"more than {MAX_NODES} expression nodes")
  if isinstance(node, sp.MatrixBase):
    parts = [_walk(x, budget, sp) for x in node]
    num, den = max((p[0] for p in parts), default=0), max((p[1] for p in parts), default=0)
    magnitude = max((p[2] for p in parts), default=0.0) + math.log10(max(node.shape) + 1)
  elif not isinstance(node, sp.Basic):
    return 0, 0, 0.0
  elif node.is_Number:
    if node.is_Rational:
      return 0, 0, max(abs(int(node.p)).bit_length(), int(node.q).bit_length()) * 0.30103
    value = abs(float(node)) if node.is_Float else 0.0
    return 0, 0, (math.log10(value) if 1.0 < value < math.inf else 0.0)
  elif node.is_Symbol or node.is_NumberSymbol or node is sp.I:
    budget.generators.add(node)
    return 1, 0, 1.0
  elif node.is_Pow or isinstance(node, (sp.MatPow, sp.exp)):
    base, exponent = (sp.E, node.args[0]) if isinstance(node, sp.exp) else node.args[:2]
    base_num, base_den, base_mag = _walk(base, budget, sp)
    exp_num, exp_den, exp_mag = _walk(exponent, budget, sp)
    if exp_num or exp_den:  # a symbolic exponent stays unevaluated: a generator
      budget.generators.add(node)
      num, den, magnitude = 1, 0, 1.0
    else:
      if exp_mag > 6:
        raise _TooComplex("an exponent above 10^6")
      integer = exponent.is_Integer and not isinstance(node, sp.exp)
      bound = abs(int(exponent)) if integer else 10 ** exp_mag
      if integer:
        num, den = base_num * bound, base_den * bound
        if exponent < 0:
          num, den = den, num
      else:  # a radical (sqrt(2), x**(1/3)) or exp(c): a generator
        budget.generators.add(node)
        num, den = 1, 0
      magnitude = max(base_mag, 0.30103) * bound
  elif isinstance(node, sp.factorial):
    arg_num, arg_den, arg_mag = _walk(node.args[0], budget, sp)
    symbolic = arg_num or arg_den
    if not symbolic and arg_mag > 3.1:
      raise _TooComplex("a factorial of a number above 1000")
    budget.generators.add(node)
    num, den, magnitude = 1, 0, (1.0 if symbolic else 10 ** arg_mag * max(arg_mag, 1.0))
  elif node.is_Add or node.is_Mul:
    parts = [_walk(a, budget, sp) for a in node.args]
    if node.is_Add:
      num, den = _add_degrees(parts)
      magnitude = max(p[2] for p in parts) + math.log10(len(parts))
    else:
      num, den = sum(p[0] for p in parts), sum(p[1] for p in parts)
      magnitude = sum(p[2] for p in parts)
  elif isinstance(node, sp.Function):
    parts = [_walk(a, budget, sp) for a in node.args]
    budget.generators.add(node)
    num, den, magnitude = 1, 0, max((p[2] for p in parts), default=0.0)
  else:  # relations, sets, intervals, tuples, logic, unevaluated wrappers
    parts = [_walk(a, budget, sp) for a in node.args]
    magnitude = max((p[2] for p in parts), default=0.0)
    if isinstance(node, sp.core.relational.Relational):
      num, den = _add_degrees(parts)  # lhs - rhs
      budget.relation_degree = max(budget.relation_degree, num + den)
      budget.relation_symbols = max(budget.relation_symbols, len(node.free_symbols))
    else:
      num, den = max((p[0] for p in parts), default=0), max((p[1] for p in parts), default=0)
  if magnitude > MAX_LOG10_MAGNITUDE:
    raise _TooComplex(f"a number above 10^{MAX_LOG10_MAGNITUDE}")
  budget.degree = max(budget.degree, num + den)
  return num, den, magnitude


def expression_cap_violation(gold, pred) -> str | None:
  """Why a parsed gold / predicted pair is too costly to compare, or None when it is not.

  Args:
    gold: the gold answer as parsed by math-verify (expression, matrix, set, relation...).
    pred: the predicted answer, likewise.
  """
  import sympy  # pylint: disable=g-import-not-at-top
  budget = _Budget()
  try:
    parts = [_walk(expr, budget, sympy) for expr in (gold, pred)]
  except _TooComplex as e:
    return str(e)
  except RecursionError:
    return "expression nested too deeply"
  num, den = _add_degrees(parts)  # simplify(gold - pred)
  degree = max(budget.degree, num + den)
  k = len(budget.generators)
  if k > MAX_GENERATORS:
    return f"more than {MAX_GENERATORS} distinct symbols, functions or radicals"
  if math.comb(degree + k, k) > MAX_EXPANDED_TERMS:
    return (f"degree {degree} in {k} generators could expand to more than "
            f"{MAX_EXPANDED_TERMS} terms")
  if budget.relation_degree > MAX_RELATION_DEGREE:
    return f"an equation or inequality of degree above {MAX_RELATION_DEGREE}"
  if budget.relation_symbols > MAX_RELATION_SYMBOLS:
    return f"an equation or inequality in more than {MAX_RELATION_SYMBOLS} variables"
  return None


@functools.lru_cache(maxsize=8_192)  # a group of samples often repeats one answer
def _symbolic_match(pred: str, gold: str) -> Check:
  """math-verify on two normalised answers, within the caps of the module docstring."""
  for name, s in (("gold", gold), ("answer", pred)):
    problem = latex_cap_violation(s)
    if problem:
      return Check(False, f"{name} not checked symbolically: {problem}")
  from math_verify import parse, verify  # pylint: disable=g-import-not-at-top
  quiet_math_verify_timeout_warning()
  seconds = SIGNAL_TIMEOUT_S if threading.current_thread() is threading.main_thread() else None
  gold_parsed = parse(f"${gold}$", parsing_timeout=seconds)
  pred_parsed = parse(f"${pred}$", parsing_timeout=seconds)
  if not gold_parsed or not pred_parsed:
    return Check(False, "math_verify could not parse the answer")
  problem = expression_cap_violation(gold_parsed[0], pred_parsed[0])
  if problem:
    return Check(False, f"not checked symbolically: {problem}")
  return Check(bool(verify(gold_parsed, pred_parsed, timeout_seconds=seconds)), "math_verify")


def check_math_answer(pred: str | None, gold: str) -> Check:
  """Compares a predicted MATH answer with the gold one; never raises, bounded time.

  See the module docstring for the rules and the time bound.

  Args:
    pred: the predicted answer (e.g. from `extract_math_answer`), or None.
    gold: the gold answer, e.g. `"\\frac{\\sqrt{3}}{2}"` (`Example.answer`).

  Returns:
    `Check(correct, reason)`; reason is "string", "text", "numeric" or "math_verify" when
    decided, else why the answer was rejected.
  """
  try:
    rejected = screen_answer_pair(pred, gold, MAX_MATH_ANSWER_CHARS, cap_gold=True)
    if rejected is not None:
      return rejected
    p, g = normalize_math_answer(pred), normalize_math_answer(gold)
    if not p or not g:
      return Check(False, "empty answer")
    if p == g:
      return Check(True, "string")
    gold_num, pred_num = _plain_number(g), _plain_number(p)
    if pred_num is None and "=" in p:  # "x = 5"
      pred_num = _plain_number(p.rsplit("=", 1)[1])
    if gold_num is not None and pred_num is not None:
      return Check(numbers_match(pred_num, gold_num), "numeric")
    if _is_text(g, gold) or _is_text(p, pred):
      return Check(_text_key(p) == _text_key(g) != "", "text")
    return _symbolic_match(p, g)
  except Exception as e:  # pylint: disable=broad-except
    return Check(False, f"checker error: {type(e).__name__}: {str(e)[:200]}")


def math_symbolic_reward(completion: str, gold_answer: str) -> float:
  """1.0 if the completion's final answer (`extract_math_answer`) equals the gold, else 0.0."""
  return 1.0 if check_math_answer(extract_math_answer(completion), gold_answer).correct else 0.0
