"""The benchmark scripts run as their docstrings show, at tiny sizes: each prints its phases
and rates (timings are never asserted: they are the scripts' output, not tests)."""
import os
import subprocess
import sys

from tests.training.tiny import _ROOT


def _start(*argv: str) -> subprocess.Popen:
  return subprocess.Popen([sys.executable, *argv], cwd=_ROOT, env=dict(os.environ),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_the_benchmarks_run_at_tiny_sizes():
  procs = {
      "train_step": _start("benchmarks/train_step.py", "--config", "configs/tiny.py",
                           "--steps", "1"),
      "objectives": _start("benchmarks/objectives.py", "--batch", "4", "--length", "16",
                           "--vocab", "64", "--layers", "1", "--width", "32", "--reps", "1"),
      "dynamic_sampling": _start("benchmarks/dynamic_sampling.py", "--config",
                                 "configs/tiny.py", "--steps", "1"),
      "reward": _start("benchmarks/reward.py", "--batch", "2", "--length", "16", "--vocab",
                       "64", "--chunks", "0,8", "--reward_batch", "4", "--reward_length", "32"),
  }
  out = {}
  for name, proc in procs.items():
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, (name, stderr[-3000:])
    out[name] = stdout
  for row in ("| student rollout |", "| reward (host) |", "| teacher scoring (inside the update) |",
              "| update (fwd+bwd+adam) |", "| whole step |", "MFU", "peak memory"):
    assert row in out["train_step"], (row, out["train_step"])
  assert "the first 95 once per group of 2" in out["train_step"]  # the group prefix is on
  for name in ("cmdp", "soft_lagrangian"):
    assert any(line.startswith(name) and "tokens/s" in line
               for line in out["objectives"].splitlines()), out["objectives"]
  for row in ("| off | 1.00 |", "| on |", "peak memory"):
    assert row in out["dynamic_sampling"], (row, out["dynamic_sampling"])
  assert "chunk_size=8" in out["reward"] and "chunk_size=None" in out["reward"], out["reward"]
