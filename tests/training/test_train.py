"""End-to-end training on configs/tiny.py: every objective, sharded meshes, resume, errors."""
import os
import signal

import jax
import numpy as np
import pytest

from cmdp.objectives import available_objectives
from cmdp.training import checkpoint as ckpt_lib
from cmdp.training import experiment
from cmdp.training import trainer
from cmdp.training.logging import read_metrics
from tests.training.tiny import tiny_config


def _no_eval(exp, params, step, hp):
  del exp, params, step, hp
  return {}


def _run(tmp_path, name="run", evaluate_fn=_no_eval, **overrides):
  config = tiny_config(**overrides)
  workdir = str(tmp_path / name)
  trainer.train(config, workdir, evaluate_fn=evaluate_fn)
  return read_metrics(workdir), workdir


@pytest.mark.parametrize("objective", sorted(available_objectives()))
def test_every_objective_trains(tmp_path, objective):
  rows, workdir = _run(tmp_path, objective=objective, num_steps=2)
  assert [r["step"] for r in rows] == [1, 2]
  for r in rows:
    bad = [k for k, v in r.items() if not np.isfinite(v)]
    assert not bad, bad
    assert r["train/nonfinite"] == 0.0
    # The rollout fills every response slot or stops at EOS: lengths are within the cap.
    assert 0 < r["train/response_length"] <= 12
  if objective == "grpo":
    # Random models never answer right: every reward in every group is 0, so the
    # group-normalised advantages and the update are exactly 0.
    assert all(r["train/task_reward"] == 0.0 and r["train/update_norm"] == 0.0 for r in rows)
  else:
    # Divergence / constraint terms give a gradient: the student moved.
    assert rows[0]["train/update_norm"] > 0
    assert rows[0]["train/param_norm"] != rows[1]["train/param_norm"]
  assert ckpt_lib.Checkpointer(workdir).latest_step() == 2


def test_dual_lambda_moves_with_the_violation(tmp_path):
  rows, _ = _run(tmp_path, objective="dual_lagrangian", num_steps=2,
                 **{"loss.lambda_lr": 0.5, "loss.lambda_init": 1.0})
  r = rows[0]
  # lambda logged at step 1 is the initial one; the step's update is projected ascent on
  # (constraint_value - budget) / budget in log space (cmdp.objectives.lagrangian).
  assert r["train/lambda"] == pytest.approx(1.0)
  expected = np.exp(0.5 * (r["train/constraint_value"] - 0.25) / 0.25)
  assert rows[1]["train/lambda"] == pytest.approx(min(expected, 10.0), rel=1e-4)


def test_sharded_mesh_matches_single_device(tmp_path):
  single, _ = _run(tmp_path, "one", num_steps=1, **{"mesh.num_devices": 1})
  sharded, _ = _run(tmp_path, "mesh", num_steps=1,
                    **{"mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 2})
  assert len(jax.devices()) == 8
  for key in ("train/kl_token", "train/kl_seq", "train/loss", "train/grad_norm",
              "train/response_length", "train/constraint_satisfaction"):
    assert sharded[0][key] == pytest.approx(single[0][key], rel=1e-3, abs=1e-5), key


def test_teacher_on_its_own_devices(tmp_path):
  same, _ = _run(tmp_path, "same", num_steps=1, **{"mesh.num_devices": 4})
  apart, _ = _run(tmp_path, "apart", num_steps=1,
                  **{"mesh.teacher_disjoint": True, "mesh.data": 2, "mesh.tensor": 2})
  for key in ("train/kl_token", "train/loss", "train/grad_norm"):
    assert apart[0][key] == pytest.approx(same[0][key], rel=1e-3, abs=1e-5), key


def test_sigterm_then_resume_equals_uninterrupted(tmp_path):
  straight, _ = _run(tmp_path, "straight", num_steps=4)

  def preempt_after_step_2(exp, params, step, hp):
    del exp, params, hp
    if step == 2:
      os.kill(os.getpid(), signal.SIGTERM)
    return {}

  first, workdir = _run(tmp_path, "resumed", num_steps=4, eval_every=1,
                        evaluate_fn=preempt_after_step_2)
  assert [r["step"] for r in first] == [1, 2]  # SIGTERM: saved at step 2 and stopped
  assert ckpt_lib.Checkpointer(workdir).latest_step() == 2
  resumed, _ = _run(tmp_path, "resumed", num_steps=4)
  assert [r["step"] for r in resumed] == [1, 2, 3, 4]
  for a, b in zip(straight[2:], resumed[2:]):
    for key, v in a.items():
      if key.startswith("train/"):
        assert b[key] == pytest.approx(v, rel=1e-6, abs=1e-7), key


def test_checkpoint_from_another_model_is_refused(tmp_path):
  _run(tmp_path, "run", num_steps=1)
  with pytest.raises(ckpt_lib.CheckpointMismatchError, match="hidden_size: checkpoint 32 vs "
                     "config 48"):
    _run(tmp_path, "run", num_steps=2, **{"student.random_init.hidden_size": 48})


def test_nan_loss_stops_with_the_last_good_state_saved(tmp_path):
  overrides = {"optimizer.learning_rate": 1e30, "optimizer.grad_clip_norm": 0.0,
               "optimizer.name": "sgd"}
  with pytest.raises(FloatingPointError, match=r"Step 1: non-finite .*'grad_norm'"):
    _run(tmp_path, "nan", num_steps=3, objective="sft", **overrides)
  checkpointer = ckpt_lib.Checkpointer(str(tmp_path / "nan"))
  assert checkpointer.latest_step() == 1  # the state after the one good step
  exp = experiment.build(tiny_config(objective="sft", **overrides))
  state, _ = trainer.create_state(exp, exp.student.params)
  state, _ = checkpointer.restore(state, exp.student.config)
  assert int(state.step) == 1
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state.params))
  # A restore under another optimizer is refused with a message, not an orbax trace.
  other = experiment.build(tiny_config(objective="sft"))
  fresh, _ = trainer.create_state(other, other.student.params)
  with pytest.raises(ckpt_lib.CheckpointMismatchError, match="config.optimizer"):
    checkpointer.restore(fresh, other.student.config)


def test_ppo_ratio_is_one_on_policy_at_any_temperature(tmp_path):
  # Before the first update the student is the sampler's policy: the ratio of the trained
  # log-probs (logits / temperature) to the sampler's log-probs must be exactly 1.
  rows, _ = _run(tmp_path, objective="grpo", num_steps=1, **{"rollout.temperature": 0.7})
  assert rows[0]["train/ratio_mean"] == pytest.approx(1.0, abs=1e-4)
  assert rows[0]["train/clip_fraction"] == 0.0
