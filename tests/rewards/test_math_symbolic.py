"""MATH answer extraction and symbolic equality against hand-checked truths; hostile inputs."""
import concurrent.futures

import pytest

from cmdp.data import Example
from cmdp.rewards import math_symbolic
from cmdp.rewards import (boxed_format_reward, check_math_answer, extract_math_answer,
                          last_boxed, math_symbolic_reward, normalize_math_answer,
                          score_completions, score_details)

# (gold, prediction, equal?): each truth checked by hand.
EQUIVALENCES = [
    (r"\frac{1}{2}", "0.5", True),
    (r"\frac{1}{2}", "0.51", False),
    (r"\frac{\sqrt2}{2}", r"\sqrt{2}/2", True),  # both sqrt(2)/2
    (r"\frac{\sqrt{2}}{2}", r"\frac{1}{\sqrt2}", True),  # 1/sqrt(2) = sqrt(2)/2
    (r"2\sqrt{3}", r"\sqrt{12}", True),  # sqrt(12) = sqrt(4*3)
    (r"2\sqrt{3}", r"\sqrt{6}", False),
    (r"4\sqrt{2}", r"\sqrt{32}", True),
    (r"\sqrt[3]{2}", "2^{1/3}", True),
    (r"\dfrac{3}{4}", r"\frac34", True),
    (r"\tfrac{1}{3}", "0.333", False),  # off by 3.3e-4
    (r"-\frac{1}{2}", r"\frac{-1}{2}", True),
    (r"\frac{\pi}{4}", r"\pi/4", True),
    (r"\pi", "3.14", False),
    ("10", "10.0", True),
    (r"1,\!000", "1000", True),
    ("-2", "2", False),
    (r"(-\infty, 3]", r"(-\infty,3]", True),
    (r"(-\infty, 3]", r"(-\infty,3)", False),  # closed vs open at 3
    (r"[2,5)", r"\left[ 2, 5 \right)", True),
    (r"(-\infty,-2)\cup(3,\infty)", r"(-\infty, -2) \cup (3, \infty)", True),
    (r"\left( 1, 2 \right)", "(1,2)", True),
    ("(1,2)", "(2,1)", False),
    (r"(3, \frac{\pi}{2})", r"\left( 3, \frac{\pi}{2} \right)", True),
    (r"\{1,2\}", r"\{2,1\}", True),  # sets are unordered
    ("2,3", "3,2", True),  # a list of all solutions
    ("3", "x=3", True),
    ("3", "x = 3", True),
    ("x=3", "3", True),
    ("3", "3x", False),
    ("y=2x+3", "2x+3", True),
    (r"x \in [1,2]", "[1,2]", True),
    ("x^2+2x+1", "(x+1)^2", True),
    ("x^2+2x+1", "(x-1)^2", False),
    ("a^3+b^3+c^3-3abc", "(a+b+c)(a^2+b^2+c^2-ab-bc-ca)", True),  # a known factorisation
    (r"\frac{1}{x+1}+\frac{1}{x-1}", r"\frac{2x}{x^2-1}", True),
    ("10!", "3628800", True),  # 10! = 3,628,800
    ("10!", "10", False),
    ("1+i", "i+1", True),
    ("6+3i", "3i+6", True),
    ("6+3i", "6-3i", False),
    (r"\begin{pmatrix} 1 \\ -2 \end{pmatrix}", r"\begin{pmatrix}1\\-2\end{pmatrix}", True),
    (r"\begin{pmatrix} 1 \\ -2 \end{pmatrix}", r"\begin{pmatrix}-2\\1\end{pmatrix}", False),
    (r"\text{(B)}", "B", True),
    (r"\text{(B)}", "(B)", True),
    (r"\text{(B)}", r"\textbf{(B)}", True),
    (r"\text{(B)}", "C", False),
    (r"30^\circ", "30", True),
    ("30", r"30^{\circ}", True),
    ("30", r"31^{\circ}", False),
    (r"5\text{ cm}", "5", True),
    ("5", r"5 \text{ cm}^2", True),
    ("5", "5 inches", True),
    ("5", "5 or 6", False),
    (r"\$18.90", "18.9", True),
    (r"50\%", "50", True),
    ("1011_2", "1011_2", True),
    (r"\text{Evelyn}", "Evelyn", True),
    (r"\text{Evelyn}", r"\text{evelyn}", True),
    (r"\text{Evelyn}", "Bob", False),
    (r"\text{even}", "odd", False),
    (r"12\pi", r"$12\pi$", True),
]


@pytest.mark.parametrize("gold, pred, equal", EQUIVALENCES)
def test_equivalence_table(gold, pred, equal):
  assert check_math_answer(pred, gold).correct is equal
  assert math_symbolic_reward(f"Some work.\nThe answer is $\\boxed{{{pred}}}$.", gold) == (
      1.0 if equal else 0.0)


@pytest.mark.parametrize("text, expected", [
    (r"First \boxed{1}, finally $\boxed{\frac{\sqrt{3}}{2}}$.", r"\frac{\sqrt{3}}{2}"),
    (r"so \boxed{\{1, 2\}}", r"\{1, 2\}"),  # escaped braces are not structural
    (r"so \fbox{$12\pi$}", r"$12\pi$"),
    (r"the remainder is $\boxed 1$.", "1"),
    (r"\boxed{\begin{pmatrix} 1 \\ 2 \end{pmatrix}}", r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}"),
    ("work\n#### 17\n", "17"),  # no \boxed: the '####' line
    ("work\nThe final answer is $-3$.", "$-3$"),  # else the last line after 'answer is'
    ("some work\n  x = 4  \n\n", "x = 4"),
    # A cut-off last \boxed is unbalanced: the whole last line is the (wrong) answer.
    (r"\boxed{1} then a cut-off \boxed{\frac{1}{", r"\boxed{1} then a cut-off \boxed{\frac{1}{"),
    ("", None),
])
def test_extract_math_answer(text, expected):
  assert extract_math_answer(text) == expected


def test_last_boxed_limits():
  assert last_boxed(r"\boxed{a{b}c}") == "a{b}c"
  assert last_boxed(r"\boxed{a{b}c") is None  # unbalanced
  assert last_boxed(r"\boxedx{1}") is None  # not the command
  assert last_boxed("\\boxed{" + "1" * 300 + "}") is None  # longer than the default cap
  assert last_boxed("\\boxed{" + "1" * 300 + "}", max_chars=None) == "1" * 300
  assert last_boxed("\\boxed{" + "{" * 20 + "}" * 20 + "}") is None  # deeper than 16


@pytest.mark.parametrize("raw, expected", [
    (r"$\dfrac{3}{4}$", r"\frac{3}{4}"),
    (r"\left( 3, \frac{\pi}{2} \right)", r"(3,\frac{\pi}{2})"),
    (r"\boxed{30^{\circ}}", "30"),
    (r"5 \text{ cm}^2.", "5"),
    (r"\textbf{(c)}", "C"),
    (r"10\,000", "10000"),
    (r"\text{Evelyn}", "Evelyn"),
    (r"\pi r^2", r"\pi r^2"),  # a space between two letters is kept
])
def test_normalize_math_answer(raw, expected):
  assert normalize_math_answer(raw) == expected


def test_score_completions_dispatches_on_source():
  math_ex = Example(uid="m", question="q", answer=r"\frac{\sqrt{3}}{2}", source="math")
  gsm_ex = Example(uid="g", question="q", answer="18", source="gsm8k")
  completions = [r"so $\boxed{\frac{\sqrt3}{2}}$", r"so $\boxed{\frac{\sqrt3}{3}}$",
                 "#### 18", r"\boxed{\frac{\sqrt3}{2}}"]
  examples = [math_ex, math_ex, gsm_ex, gsm_ex]
  assert score_completions(completions, examples).tolist() == [1.0, 0.0, 1.0, 0.0]
  details = score_details(completions, examples, format_weight=0.5)
  # MATH's format bonus is a final \boxed{}; GSM8K's a '#### <number>' line.
  assert [d.format for d in details] == [1.0, 1.0, 1.0, 0.0]
  assert [d.reward for d in details] == [1.5, 0.5, 1.5, 0.0]
  assert details[0].reason == "math_verify" and details[0].extracted == r"\frac{\sqrt3}{2}"


@pytest.mark.parametrize("completion, expected", [
    (r"so the answer is $\boxed{5}$.", 1.0),
    (r"\boxed{}", 0.0),
    (r"\boxed{5", 0.0),
    (r"\boxed{5}" + "x" * 3_000, 0.0),  # not near the end
    ("#### 5", 0.0),
])
def test_boxed_format_reward(completion, expected):
  assert boxed_format_reward(completion) == expected


# (completion, gold, part of the reason): each must score 0, and the reason shows which guard
# stopped it (a hang here would mean a guard is missing).
HOSTILE = [
    ("a" * 100_000, "5", "no answer"),  # the last line is too long to be an answer
    ("{" * 50_000 + "}" * 50_000, "5", ""),
    ("\\boxed{" * 30_000 + "5" + "}" * 30_000, "5", ""),
    ("\\boxed{" + "(" * 40 + "x" + ")" * 40 + "}", "x", "nested deeper"),
    (r"\boxed{(x+1)^{999}}", "(x+2)^{999}", "could expand"),
    (r"\boxed{\frac{1}{(x+y+z)^{12}}}", r"\frac{1}{(x+y+2z)^{12}}", "could expand"),
    (r"\boxed{" + "(a+b)(b+c)(c+a)" * 8 + "}", "(a+b)^{24}", "could expand"),
    (r"\boxed{9^{9^{9^{9}}}}", "1", "exponent above"),
    (r"\boxed{(2^{999})^{999}}", "2", "a number above"),
    (r"\boxed{(10^{10})!}", "1", "factorial"),
    (r"\boxed{\begin{pmatrix}1&2\\3&4\end{pmatrix}^{10^{9}}}", "1", "exponent above"),
    (r"\boxed{x^2+y^2+z^2+w^2=1}", "x^2+y^2+z^2+2w^2=1", "more than 3 variables"),
    (r"\boxed{x^5+y=1}", "x^5+2y=1", "degree above"),
    (r"\boxed{\begin{array}{c}1\end{array}}", "1", "environment"),
    (r"\boxed{\int_0^1 x\,dx}", r"\frac{1}{2}", "whitelist"),
    (r"\boxed{" + "1" * 30 + "x}", "x", "digits"),
    ("\\boxed{" + "x+" * 100 + "1}", "1", "longer than"),
    ("#### \x00\x01\x02 5\ud800", "5", ""),
    ("".join(chr(0x4e00 + (i * 7919) % 20_000) for i in range(20_000)), "5", ""),
]


def _score_hostile():
  out = []
  for completion, gold, _ in HOSTILE:
    check = check_math_answer(extract_math_answer(completion), gold)
    out.append((math_symbolic_reward(completion, gold), check.correct, check.reason))
  return out


def _assert_hostile(results):
  for (completion, _, reason_part), (reward, correct, reason) in zip(HOSTILE, results):
    assert (reward, correct) == (0.0, False), completion[:80]
    assert reason_part in reason, (completion[:80], reason)


def test_hostile_inputs_score_zero_in_main_thread():
  _assert_hostile(_score_hostile())


def test_hostile_inputs_score_zero_in_a_worker_thread():
  # math-verify's signal timeouts cannot work off the main thread: our caps must hold.
  math_symbolic._symbolic_match.cache_clear()  # pylint: disable=protected-access
  with concurrent.futures.ThreadPoolExecutor(1) as pool:
    results = pool.submit(_score_hostile).result(timeout=120)
  _assert_hostile(results)


def test_symbolic_equality_in_a_worker_thread():
  pairs = [(r"\frac{\sqrt{2}}{2}", r"\frac{1}{\sqrt2}"), ("x^2+2x+1", "(x+1)^2"),
           (r"\frac{\sqrt{2}}{2}", r"\frac{1}{\sqrt3}")]
  math_symbolic._symbolic_match.cache_clear()  # pylint: disable=protected-access
  with concurrent.futures.ThreadPoolExecutor(1) as pool:
    results = list(pool.map(lambda p: check_math_answer(p[1], p[0]), pairs, timeout=120))
  assert [(c.correct, c.reason) for c in results] == [
      (True, "math_verify"), (True, "math_verify"), (False, "math_verify")]
