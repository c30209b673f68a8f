"""Two processes on this machine (a local coordinator, CPU collectives over gloo) train
configs/tiny.py to the same losses and parameters as one process with as many devices.

Each process reads its own half of every batch of prompts, builds the global batch from
its rows, scores its own rows' rewards on its host, and takes part in the orbax
checkpoint; process 0 alone writes metrics.jsonl.
"""
import json
import os
import socket
import subprocess
import sys

import pytest

from tests.training.tiny import _ROOT

STEPS = 2


def worker(workdir: str, coordinator: str = "", num_processes: int = 1,
           process_id: int = 0) -> None:
  """One process of a run: trains the tiny config for STEPS steps; the final "evaluation"
  logs a checksum of the student's parameters (a global reduction, so every process takes
  part and process 0 logs it)."""
  import jax  # pylint: disable=import-outside-toplevel
  if num_processes > 1:
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                               process_id=process_id)
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from cmdp.training import trainer  # pylint: disable=import-outside-toplevel
  from tests.training.tiny import tiny_config  # pylint: disable=import-outside-toplevel

  def checksum(exp, params, step, hp):
    del exp, step, hp
    leaves = jax.tree.leaves(params)
    return {"check/param_abs_sum": float(sum(jnp.abs(x.astype(jnp.float32)).sum() for x in leaves)),
            "check/param_sq_sum": float(sum(jnp.square(x.astype(jnp.float32)).sum()
                                            for x in leaves))}

  config = tiny_config(num_steps=STEPS, eval_at_end=True)
  trainer.train(config, workdir, evaluate_fn=checksum)
  assert jax.process_count() == num_processes


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _start(workdir: str, devices: int, *args) -> subprocess.Popen:
  env = {**os.environ, "JAX_PLATFORMS": "cpu",
         "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
  code = f"from tests.training.test_multihost import worker; worker{(workdir, *args)!r}"
  return subprocess.Popen([sys.executable, "-c", code], cwd=_ROOT, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(procs) -> None:
  for proc in procs:
    try:
      out, _ = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
      for p in procs:
        p.kill()
      raise
    assert proc.returncode == 0, out[-4000:]


def _rows(workdir: str) -> list[dict]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f if line.strip()]


def test_two_processes_match_one(tmp_path):
  one, two = str(tmp_path / "one"), str(tmp_path / "two")
  coordinator = f"localhost:{_free_port()}"
  procs = [_start(two, 1, coordinator, 2, i) for i in range(2)]
  procs.append(_start(one, 2))
  _finish(procs)
  ref, got = _rows(one), _rows(two)
  assert [r["step"] for r in got] == [r["step"] for r in ref] == [*range(1, STEPS + 1), STEPS]
  for r, g in zip(ref[:STEPS], got[:STEPS]):
    for key in ("train/loss", "train/task_reward", "train/kl_seq", "train/grad_norm"):
      assert g[key] == pytest.approx(r[key], rel=1e-5, abs=1e-7), key
    assert g["train/accuracy"] == r["train/accuracy"]
  for key in ("check/param_abs_sum", "check/param_sq_sum"):
    assert got[-1][key] == pytest.approx(ref[-1][key], rel=1e-6), key
  # The orbax checkpoint of the last step, written by both processes together.
  assert os.path.isdir(os.path.join(two, "checkpoints", str(STEPS)))


def test_prompt_shards_concatenate_to_the_one_process_batch():
  from cmdp.data import PromptIterator  # pylint: disable=import-outside-toplevel
  items = list(range(10))
  whole = PromptIterator(items, 4, seed=3)
  parts = [PromptIterator(items, 4, seed=3, shard=(i, 2)) for i in range(2)]
  for _ in range(5):  # across an epoch boundary
    assert parts[0].next_batch() + parts[1].next_batch() == whole.next_batch()
    assert parts[0].state() == parts[1].state() == whole.state()
  with pytest.raises(ValueError, match=r"cannot be split into 3 equal parts"):
    PromptIterator(items, 4, seed=3, shard=(0, 3))


def test_distributed_settings_come_from_the_environment():
  # In a subprocess: cmdp.train defines absl flags that cmdp.evaluate (other tests) defines too.
  code = """if True:
    import pytest
    from cmdp.train import distributed_settings
    assert not distributed_settings({})  # a TPU VM slice: jax finds it
    env = {"JAX_COORDINATOR_ADDRESS": "node-a:12242", "JAX_NUM_PROCESSES": "4",
           "JAX_PROCESS_ID": "3"}
    assert distributed_settings(env) == {"coordinator_address": "node-a:12242",
                                         "num_processes": 4, "process_id": 3}
    with pytest.raises(SystemExit, match="JAX_PROCESS_ID='x' must be an integer"):
      distributed_settings({"JAX_PROCESS_ID": "x"})
  """
  proc = subprocess.run([sys.executable, "-c", code], cwd=_ROOT, capture_output=True, text=True,
                        timeout=120)
  assert proc.returncode == 0, proc.stderr
