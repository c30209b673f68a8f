"""The commands as a user meets them: --help exits 0 with options and an example, and a
user's mistake is one line naming the field and the fix, with no traceback (--verbose
shows it)."""
import glob
import os
import re
import subprocess
import sys

import pytest

from cmdp.objectives import available_objectives
from tests.training.tiny import _ROOT, save_untrained_checkpoint


def _env() -> dict:
  """One CPU device, as a user's shell has it."""
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env.update(JAX_PLATFORMS="cpu", HF_HUB_OFFLINE="1")
  return env


def _start(argv: list[str]) -> subprocess.Popen:
  return subprocess.Popen(argv, cwd=_ROOT, env=_env(), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)


def _finish(procs: dict) -> dict:
  """`{name: (returncode, stdout, stderr)}` of processes started together."""
  out = {}
  for name, proc in procs.items():
    stdout, stderr = proc.communicate(timeout=300)
    out[name] = (proc.returncode, stdout, stderr)
  return out


def _commands() -> list[list[str]]:
  """Every `python -m cmdp.*` entry point (a package's __main__.py or a module that runs as
  a script) and every launch script, found in the tree."""
  out = []
  for path in sorted(glob.glob(os.path.join(_ROOT, "cmdp", "**", "*.py"), recursive=True)):
    rel = os.path.relpath(path, _ROOT)[:-3].replace(os.sep, ".")
    if rel.endswith(".__main__"):
      out.append([sys.executable, "-m", rel[:-len(".__main__")]])
    elif re.search(r'^if __name__ == "__main__":', open(path).read(), re.M):
      out.append([sys.executable, "-m", rel])
  out += [["bash", p] for p in sorted(glob.glob(os.path.join(_ROOT, "launch", "*.sh")))]
  return out


def test_every_command_answers_help():
  commands = _commands()
  names = [" ".join(c[1:]) for c in commands]
  assert {"-m cmdp.train", "-m cmdp.evaluate", "-m cmdp.plan", "-m cmdp.study"} <= set(names)
  assert sum(n.endswith(".sh") for n in names) == 3
  done = _finish({n: _start([*c, "--help"]) for n, c in zip(names, commands)})
  for name, (code, stdout, stderr) in done.items():
    assert code == 0, (name, stderr[-2000:])
    assert re.search(r"example", stdout, re.I), (name, stdout)
    assert re.search(r"^\s+--[a-z]", stdout, re.M), (name, "no options listed", stdout)
    assert "Traceback" not in stderr, name
  # cmdp.train lists the configs it can run and the objectives.
  train = done["-m cmdp.train"][1]
  for path in glob.glob(os.path.join(_ROOT, "configs", "*.py")):
    if not os.path.basename(path).startswith("study_"):
      assert f"configs/{os.path.basename(path)}" in train
  listed = re.search(r"\nObjectives .*?\):\n((?:  [^\n]*\n)+)", train, re.S).group(1)
  assert set(re.findall(r"\w+", listed)) == set(available_objectives())


def _one_line(result, *expected: str) -> None:
  code, _, stderr = result
  assert code == 2, stderr
  lines = stderr.strip().splitlines()
  assert len(lines) == 1 and "Traceback" not in stderr, stderr
  for text in expected:
    assert text in lines[0], (text, lines[0])


@pytest.fixture(name="dual_checkpoint")
def _dual_checkpoint(tmp_path):
  """A workdir with a checkpoint of configs/tiny.py:objective=dual_lagrangian."""
  save_untrained_checkpoint(str(tmp_path / "dual"), "dual_lagrangian", step=0)
  return str(tmp_path / "dual")


def test_a_users_mistake_is_one_line(tmp_path, dual_checkpoint):
  train = [sys.executable, "-m", "cmdp.train", "--workdir", str(tmp_path / "run")]
  evaluate = [sys.executable, "-m", "cmdp.evaluate"]
  tiny = ["--config", "configs/tiny.py"]
  bad_lines = tmp_path / "bad.jsonl"
  bad_lines.write_text('{"question": "1+1?", "answer": "#### 2"}\nnot json\n')
  done = _finish({
      "value": _start([*train, *tiny, "--config.batch_size=7"]),
      "value_verbose": _start([*train, *tiny, "--config.batch_size=7", "--verbose"]),
      "misspelt": _start([*train, *tiny, "--config.los.budget=1"]),
      "misspelt_leaf": _start([*train, *tiny, "--config.loss.budgt=1"]),
      "unknown_leaf": _start([*train, *tiny, "--config.loss.xyzzy=1"]),
      "moved": _start([*train, *tiny, "--config.loss.group_size=4"]),
      "argument": _start([*train, "--config", "configs/tiny.py:objectiv=grpo"]),
      "argument_type": _start([*train, "--config", "configs/tiny.py:steps=ten"]),
      "quote_root": _start([sys.executable, "-m", "cmdp.quote", "--root", str(tmp_path)]),
      "no_file": _start([*train, "--config", "configs/nope.py"]),
      # The objective switched by override, with a loss field it does not read.
      "objective": _start([*train, *tiny, "--config.objective=grpo",
                           "--config.loss.penalty_scale=0.5"]),
      "gsm8k_dir": _start([*train, "--config",
                           "configs/smollm2_sums.py:task=gsm8k,gsm8k_dir=/no/such/dir"]),
      # A GSM8K file under the tiny config, whose reasoning-gym arguments it does not take.
      "file_task": _start([*train, *tiny, f"--config.data.train=gsm8k:{bad_lines}"]),
      "malformed": _start([*train, *tiny, f"--config.data.train=gsm8k:{bad_lines}",
                           "--config.data.task_kwargs={}"]),
      "no_workdir": _start([*evaluate, "--workdir", str(tmp_path / "missing")]),
      "no_config_json": _start([*evaluate, "--workdir", str(tmp_path)]),
      "other_objective": _start([*evaluate, *tiny, "--workdir", dual_checkpoint]),
  })
  _one_line(done["value"], "config.batch_size", "rollout.group_size")
  assert done["value_verbose"][0] != 0 and "Traceback" in done["value_verbose"][2]
  _one_line(done["misspelt"], "'los'", '"loss"')
  _one_line(done["misspelt_leaf"], "--config.loss.budgt:", "'budgt'", 'did you mean "budget"?',
            "docs/configuration.md")
  _one_line(done["unknown_leaf"], "--config.loss.xyzzy:", "no field 'xyzzy'")
  _one_line(done["moved"], "config.loss.group_size moved to config.rollout.group_size; "
            "set that instead.")
  _one_line(done["argument"], "'objectiv'", "objective")
  _one_line(done["argument_type"], "steps='ten'", "int expected")
  _one_line(done["quote_root"], "--root=", "README.md")
  _one_line(done["no_file"], "--config", "configs/nope.py")
  _one_line(done["objective"], "config.loss.penalty_scale", "'grpo'", "objective=OBJECTIVE")
  _one_line(done["gsm8k_dir"], "gsm8k_dir='/no/such/dir'", "openai/gsm8k")
  _one_line(done["file_task"], "config.data.train=", "gsm8k file", "max_terms",
            "--config.data.task_kwargs='{}'")
  _one_line(done["malformed"], "bad.jsonl:2", "invalid JSON", "'not json'")
  _one_line(done["no_workdir"], "--workdir", "does not exist")
  _one_line(done["no_config_json"], "config.json", "--config")
  # The checkpoint mismatch names the part of the state that differs and the fix.
  _one_line(done["other_objective"], "objective state", "'dual_lagrangian'",
            "config.json")
  assert not os.path.exists(tmp_path / "missing")  # nothing created for a mistake
