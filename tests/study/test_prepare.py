"""The study's shared stages are the trainer's: on the same config, `compare.prepare` and
`trainer.train` calibrate to the same budget, the quantile of the initial student's costs
sampled here directly on the run's held-out calibration problems."""
import jax
import ml_collections
import numpy as np

from cmdp.study import compare
from cmdp.training import calibration, experiment, trainer
from cmdp.training import checkpoint as ckpt_lib
from tests.training.tiny import tiny_config


def test_prepare_and_train_calibrate_to_the_same_budget(tmp_path):
  config = tiny_config(calibrate_budget_quantile=0.5, num_steps=0)
  # The reference: the loaded student's costs on the calibration problems, numpy's quantile.
  exp = experiment.build(config)
  examples = experiment.heldout_parts(config)[1]
  costs = calibration.calibration_samples(exp, exp.student.params,
                                          jax.random.PRNGKey(config.seed + 1), examples)["costs"]
  assert costs.size == config.calibration_prompts * config.rollout.group_size

  trainer.train(config, str(tmp_path / "run"), evaluate_fn=lambda *a: {})
  checkpointer = ckpt_lib.Checkpointer(str(tmp_path / "run"))
  trained = checkpointer.read_meta()["budget"]
  checkpointer.close()
  assert trained == np.quantile(costs, 0.5)

  study = ml_collections.ConfigDict(dict(
      run=config, budget_quantiles=(0.5, 0.9), calibration=dict(seed=config.seed + 1),
      eval=dict(batch_size=config.eval.batch_size, pass_k=1)))
  (tmp_path / "study").mkdir()
  _, budgets, initial = compare.prepare(study, str(tmp_path / "study"))
  assert budgets == {"q50": trained, "q90": np.quantile(costs, 0.9)}
  assert initial["student"]["num_examples"] == len(exp.test_examples)
