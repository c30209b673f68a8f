"""End-to-end training on configs/tiny.py: every objective, sharded meshes, resume, errors."""
import os
import signal

import jax
import numpy as np
import pytest

from cmdp.objectives import available_objectives, get_objective
from cmdp.training import checkpoint as ckpt_lib
from cmdp.training import experiment
from cmdp.training import trainer
from cmdp.training.logging import read_metrics
from tests.training.metrics_doc import undocumented
from tests.training.tiny import save_untrained_checkpoint, tiny_config


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
  # Every key the objective logs has its row in docs/metrics.md.
  assert not undocumented(set().union(*rows), "metrics.jsonl"), "add rows to docs/metrics.md"
  # lambda only where there is a multiplier; accuracy only on the student's own samples
  # (reference text is not the student's answer).
  assert ("train/lambda" in rows[0]) == objective.endswith("_lagrangian")
  assert ("train/accuracy" in rows[0]) == get_objective(objective).on_policy
  for r in rows:
    bad = [k for k, v in r.items() if not np.isfinite(v)]
    assert not bad, bad
    assert r["train/nonfinite"] == 0.0
    # The rollout fills every response slot or stops at EOS: lengths are within the cap.
    assert 0 < r["train/response_length"] <= 12
    if "train/mismatch_abs_logprob" in r:
      # Rollouts come from the student being trained: after the first update too, the
      # sampler's log-probs equal the trainer's (they came from the initial student before).
      assert r["train/mismatch_abs_logprob"] < 1e-4, (r["step"], objective)
  if objective == "grpo":
    # Random models never answer right: every reward in every group is 0, so the
    # group-normalised advantages and the update are exactly 0.
    assert all(r["train/task_reward"] == 0.0 and r["train/update_norm"] == 0.0 for r in rows)
  elif objective == "dual_lagrangian":
    # lambda starts at 0 (grpo, no reward: no update) and moves only if C(y) exceeds d.
    assert rows[0]["train/lambda"] == 0.0 and rows[0]["train/update_norm"] == 0.0
    assert rows[1]["train/lambda"] == 0.0 or rows[1]["train/update_norm"] > 0
  elif objective == "cmdp":
    # No reward is ever earned: the terminal penalty's score function has a gradient only
    # where some group mixes samples within and over d (at d = 0.25 every sample of step 1
    # overshoots, some of step 2 do not; without the boundary term step 1 has none, its
    # returns equal and every token after a flag settled, as enumerated in tests/objectives).
    # The boundary term (loss.boundary_width, on) pulls on the costs of samples near d:
    # step 1's, about one band h = 0.1 d over it, get a gradient with no group contrast.
    assert rows[0]["train/groups_mixed"] == 0 and rows[0]["train/boundary_weight"] > 0
    assert all(r["train/grad_norm"] > 0 for r in rows)
    assert any(r["train/groups_mixed"] > 0 and r["train/update_norm"] > 0 for r in rows)
  else:
    # Divergence / constraint terms give a gradient: the student moved.
    assert rows[0]["train/update_norm"] > 0
    assert rows[0]["train/param_norm"] != rows[1]["train/param_norm"]
  assert ckpt_lib.Checkpointer(workdir).latest_step() == 2


def test_dual_lambda_moves_with_the_violation(tmp_path):
  rows, _ = _run(tmp_path, objective="dual_lagrangian", num_steps=2,
                 **{"loss.lambda_lr": 0.5, "loss.lambda_init": 1.0})
  r = rows[0]
  # lambda logged at step 1 is the initial one; the step's update is projected ascent of
  # lambda * d by lr * (constraint_value - d) / d (cmdp.objectives.lagrangian), d = 0.25.
  assert r["train/lambda"] == pytest.approx(1.0)
  expected = 1.0 + 0.5 * (r["train/constraint_value"] - 0.25) / 0.25 / 0.25
  assert rows[1]["train/lambda"] == pytest.approx(min(max(expected, 0.0), 100.0), rel=1e-4)


def test_worst_case_step_is_bounded(tmp_path):
  """Its constant penalty makes groups whose samples all violate at the same token: the
  advantages and the gradient stay on the rewards' scale (were ~5e6)."""
  rows, _ = _run(tmp_path, objective="worst_case", num_steps=1,
                 **{"loss.normalize_std": True})
  assert rows[0]["train/advantage_abs_mean"] < 10.0
  assert rows[0]["train/grad_norm"] < 1e3


def test_sharded_layouts_match_single_device(tmp_path):
  """A (data, fsdp, tensor) = (2, 2, 2) mesh, and a teacher on the four devices the
  student's (2, 1, 2) mesh leaves free, give the one-device step; with two PPO epochs of two
  minibatches and two microbatches each."""
  ppo = {"ppo_epochs": 2, "ppo_minibatches": 2, "grad_accum_steps": 2}
  single, _ = _run(tmp_path, "one", num_steps=1, **{"mesh.num_devices": 1}, **ppo)
  sharded, _ = _run(tmp_path, "mesh", num_steps=1,
                    **{"mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 2}, **ppo)
  apart, _ = _run(tmp_path, "apart", num_steps=1,
                  **{"mesh.teacher_disjoint": True, "mesh.data": 2, "mesh.tensor": 2}, **ppo)
  assert len(jax.devices()) == 8
  for key in ("train/kl_token", "train/kl_seq", "train/loss", "train/grad_norm",
              "train/response_length", "train/constraint_satisfaction"):
    assert sharded[0][key] == pytest.approx(single[0][key], rel=1e-3, abs=1e-5), key
  for key in ("train/kl_token", "train/loss", "train/grad_norm"):
    assert apart[0][key] == pytest.approx(single[0][key], rel=1e-3, abs=1e-5), key


def test_sigterm_then_resume_equals_uninterrupted(tmp_path):
  """Under two PPO epochs (several optimiser updates per rollout); the interrupted run
  saves synchronously (checkpoint_async=False), the straight one in the background."""
  straight, _ = _run(tmp_path, "straight", num_steps=4, ppo_epochs=2)

  def preempt_after_step_2(exp, params, step, hp):
    del exp, params, hp
    if step == 2:
      os.kill(os.getpid(), signal.SIGTERM)
    return {}

  first, workdir = _run(tmp_path, "resumed", num_steps=4, eval_every=1,
                        evaluate_fn=preempt_after_step_2, ppo_epochs=2, checkpoint_async=False)
  assert [r["step"] for r in first] == [1, 2]  # SIGTERM: saved at step 2 and stopped
  assert ckpt_lib.Checkpointer(workdir).latest_step() == 2
  resumed, _ = _run(tmp_path, "resumed", num_steps=4, ppo_epochs=2, checkpoint_async=False)
  assert [r["step"] for r in resumed] == [1, 2, 3, 4]
  for a, b in zip(straight[2:], resumed[2:]):
    for key, v in a.items():
      if key.startswith("train/"):
        assert b[key] == pytest.approx(v, rel=1e-6, abs=1e-7), key


def test_checkpoint_from_another_model_is_refused(tmp_path):
  save_untrained_checkpoint(str(tmp_path / "run"))
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


def test_training_calibration_and_evaluation_measure_one_constraint(tmp_path):
  """At rollout temperature 0.7, the step's KL and satisfaction equal the scorer's that
  calibration and evaluation use, on the same batch: all read the deployed student."""
  config = tiny_config(objective="cmdp", **{"rollout.temperature": 0.7})
  exp = experiment.build(config)
  state, shardings = trainer.create_state(exp, exp.student.params)
  batch, _ = trainer.make_batch(exp, state.params, exp.train_examples[:4],
                                jax.random.PRNGKey(3), True)
  scores = exp.score_sequences(state.params, batch)
  _, metrics = exp.make_train_step(exp.hp, shardings)(state, exp.step_teacher_params, batch)
  assert float(metrics["kl_seq"]) == pytest.approx(scores["kl_seq"].mean(), rel=1e-4)
  assert float(metrics["constraint_satisfaction"]) == pytest.approx(scores["satisfied"].mean())
  assert float(metrics["constraint_value"]) == pytest.approx(scores["sequence_cost"].mean(),
                                                             rel=1e-4)


@pytest.mark.parametrize("objective, calibration_batch_size", [
    ("cmdp", 32), ("worst_case", 0), ("soft_lagrangian", 0), ("dual_lagrangian", 0)])
def test_calibrated_quantile_gives_that_first_step_satisfaction(tmp_path, objective,
                                                                calibration_batch_size):
  """Calibrating d at the median of the initial student's C(y) leaves about half of the
  first step's fresh samples within it, whatever the objective's constraint and however
  many samples each calibration pass takes."""
  rows, _ = _run(tmp_path, objective=objective, num_steps=1, batch_size=48,
                 calibrate_budget_quantile=0.5, calibration_prompts=32,
                 calibration_batch_size=calibration_batch_size)
  # 64 calibration samples, 48 step samples: binomial sd about 0.07 each.
  assert rows[0]["train/constraint_satisfaction"] == pytest.approx(0.5, abs=0.25)
