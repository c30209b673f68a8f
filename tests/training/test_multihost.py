"""Two processes on this machine (a local coordinator, CPU collectives over gloo) train
configs/tiny.py to the same calibrated budget, losses, parameters and evaluation as one
process with as many devices.

Each process reads its own half of every batch of prompts, builds the global batch from
its rows, scores its own rows' rewards on its host, and takes part in the orbax
checkpoint; budget calibration and the evaluation (of the initial and the final student,
the test set's last batch padded) gather every process's per-row figures; process 0 alone
writes metrics.jsonl and eval.json.
"""
import json
import os
import socket
import subprocess
import sys

import pytest

from tests.training.tiny import _ROOT, tiny_config

STEPS = 2
TEST_SIZE = 9  # eval batches of 8: the second holds one example, process 1's half none


def worker(workdir: str, coordinator: str = "", num_processes: int = 1,
           process_id: int = 0, keep_teacher_logits: bool = False) -> None:
  """One process of a run: calibrates the budget, evaluates the initial student, trains the
  tiny config for STEPS steps and evaluates the final student (the built-in evaluation,
  eval.json), logging with it a checksum of the student's parameters (a global reduction,
  so every process takes part and process 0 logs it). `keep_teacher_logits`: under
  dynamic sampling, the step reading the signal pass's teacher logits of the kept rows."""
  import jax  # pylint: disable=import-outside-toplevel
  if num_processes > 1:
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                               process_id=process_id)
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from cmdp.training import eval_loop, trainer  # pylint: disable=import-outside-toplevel

  def evaluate_and_checksum(exp, params, step, hp):
    leaves = jax.tree.leaves(params)
    return {**eval_loop.evaluate_and_write(exp, params, step, hp, workdir=workdir),
            "check/param_abs_sum": float(sum(jnp.abs(x.astype(jnp.float32)).sum() for x in leaves)),
            "check/param_sq_sum": float(sum(jnp.square(x.astype(jnp.float32)).sum()
                                            for x in leaves))}

  config = tiny_config(num_steps=STEPS, eval_at_end=True, calibrate_budget_quantile=0.5,
                       calibration_prompts=4, **{"data.test_size": TEST_SIZE,
                                                 "eval.include_initial_student": True},
                       **({"dynamic_sampling.enabled": True, "loss.boundary_width": 0.0,
                           "dynamic_sampling.keep_teacher_logits": True}
                          if keep_teacher_logits else {}))
  trainer.train(config, workdir, evaluate_fn=evaluate_and_checksum)
  assert jax.process_count() == num_processes


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _start(workdir: str, devices: int, *args) -> subprocess.Popen:
  flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
           if not f.startswith("--xla_force_host_platform_device_count")]
  env = {**os.environ, "JAX_PLATFORMS": "cpu",
         "XLA_FLAGS": " ".join([*flags, f"--xla_force_host_platform_device_count={devices}"])}
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


def _eval(workdir: str) -> dict:
  with open(os.path.join(workdir, "eval.json")) as f:
    return json.load(f)


def test_two_processes_match_one(tmp_path):
  """Under dynamic sampling with the kept teacher logits: each process fills its share of
  the groups with contrast, the kept rows are gathered over the processes, and the step
  runs no teacher (the plain step is the same program without the filter)."""
  one, two = str(tmp_path / "one"), str(tmp_path / "two")
  coordinator = f"localhost:{_free_port()}"
  procs = [_start(two, 1, coordinator, 2, i, True) for i in range(2)]
  procs.append(_start(one, 2, "", 1, 0, True))
  _finish(procs)
  ref, got = _rows(one), _rows(two)
  assert [r["step"] for r in got] == [r["step"] for r in ref] == [*range(1, STEPS + 1), STEPS]
  # The budget calibrated from every process's samples, as one process calibrates it.
  budget = ref[0]["train/budget"]
  assert budget != tiny_config().loss.budget
  for r, g in zip(ref[:STEPS], got[:STEPS]):
    assert g["train/budget"] == pytest.approx(budget, rel=1e-6)
    for key in ("train/loss", "train/task_reward", "train/kl_seq", "train/grad_norm"):
      assert g[key] == pytest.approx(r[key], rel=1e-5, abs=1e-7), key
    assert g["train/accuracy"] == r["train/accuracy"]
    # The same groups kept from as many generation batches.
    assert g["train/generation_batches"] == r["train/generation_batches"]
    assert g["train/groups_kept"] == r["train/groups_kept"]
  for key in ("check/param_abs_sum", "check/param_sq_sum"):
    assert got[-1][key] == pytest.approx(ref[-1][key], rel=1e-6), key
  # The evaluations: the same figures over the same TEST_SIZE examples, padding left out.
  ref_eval, got_eval = _eval(one), _eval(two)
  assert got_eval["step"] == ref_eval["step"] == STEPS
  assert set(got_eval["models"]) == set(ref_eval["models"]) == {"initial_student", "student"}
  for name, r in ref_eval["models"].items():
    g = got_eval["models"][name]
    assert set(g) == set(r), name
    assert r["num_examples"] == r["num_greedy"] == r["num_sampled"] == TEST_SIZE
    assert r["budget"] == pytest.approx(budget)
    for key, value in r.items():
      if value is None:  # a correlation where R or C is constant over the test set
        assert g[key] is None, (name, key)
      else:
        assert g[key] == pytest.approx(value, rel=1e-5, abs=1e-6), (name, key)
  # The orbax checkpoint of the last step, written by both processes together.
  assert os.path.isdir(os.path.join(two, "checkpoints", str(STEPS)))


def test_batches_must_split_over_the_processes(monkeypatch):
  import jax  # pylint: disable=import-outside-toplevel
  from cmdp.training import trainer  # pylint: disable=import-outside-toplevel
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  evaluated = {"eval_at_end": True, "calibrate_budget_quantile": 0.5}
  trainer._check_processes(tiny_config(**evaluated), default_eval=True)
  with pytest.raises(ValueError, match=r"config.eval.batch_size=5 does not split over 2 "):
    trainer._check_processes(tiny_config(**evaluated, **{"eval.batch_size": 5}),
                             default_eval=True)
  with pytest.raises(ValueError, match=r"config.batch_size: 3 prompts per step"):
    trainer._check_processes(tiny_config(batch_size=6), default_eval=False)
  with pytest.raises(ValueError, match=r"config.mesh.teacher_disjoint: a teacher on devices"):
    trainer._check_processes(tiny_config(**{"mesh.teacher_disjoint": True}), default_eval=False)


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
