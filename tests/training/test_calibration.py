"""Budget calibration on held-out problems (`cmdp.training.calibration`): the calibration
problems are distinct, disjoint from the training and the evaluated ones, and a budget
calibrated at quantile q reads as q, up to the sampling error of both samples, on the
evaluated problems."""
import math

import jax
import numpy as np
import pytest
import scipy.stats

from cmdp import constraint, evaluation
from cmdp.evaluation import stats
from cmdp.training import calibration, eval_loop, experiment, trainer
from tests.training.tiny import tiny_config

QUANTILES = (0.25, 0.5, 0.9)


def _bound(q: float, n_calibration: float, n_evaluation: float, confidence: float = 0.99):
  """The two-sided `confidence` binomial bound on |satisfaction - q| when d is the q
  quantile of `n_calibration` samples and satisfaction a share of `n_evaluation` samples
  of the same distribution: both shares' sampling variances add."""
  z = scipy.stats.norm.ppf((1 + confidence) / 2)
  return z * math.sqrt(q * (1 - q) * (1 / n_calibration + 1 / n_evaluation))


def _effective(samples: dict, budget: float, n_evaluation: int) -> tuple[float, float]:
  """The effective sample counts of both sets: 4 samples of one question are not 4
  independent samples (the cost depends on the question). The design effect is measured on
  the calibration samples at `budget` (`stats.clustered_proportion`) and applies to the
  evaluation's, which are drawn the same way (4 per question)."""
  within = samples["costs"] <= budget
  n_eff = stats.clustered_proportion(within, samples["question"]).n
  return n_eff, n_evaluation * n_eff / within.size


@pytest.fixture(scope="module")
def calibrated():
  """The initial tiny student's calibration samples and its evaluation at the budgets of
  QUANTILES (one calibration, one evaluation)."""
  config = tiny_config(calibrate_budget_quantile=0.5, calibration_prompts=96,
                       calibration_batch_size=96, **{
                           "rollout.group_size": 4, "data.test_size": 96, "eval.pass_k": 4,
                           "eval.batch_size": 96})
  exp = experiment.build(config)
  state, _ = trainer.create_state(exp, exp.student.params)
  examples = calibration.calibration_examples(config)
  samples = calibration.calibration_samples(exp, state.params, jax.random.PRNGKey(1), examples)
  budgets = {f"q{round(100 * q)}": constraint.calibrate_budget(samples["costs"], q)
             for q in QUANTILES}
  result = evaluation.evaluate_model(
      eval_loop.model_fns(exp, "student", exp.hp), state.params, exp.test_examples,
      batch_size=config.eval.batch_size, pass_k=config.eval.pass_k, other_budgets=budgets)
  return exp, examples, samples, budgets, result


def test_calibration_problems_are_held_out_and_distinct(calibrated):
  exp, examples, samples, _, _ = calibrated
  questions = [ex.question for ex in examples]
  assert len(set(questions)) == len(questions)
  assert not set(questions) & {ex.question for ex in exp.train_examples}
  assert not set(questions) & {ex.question for ex in exp.test_examples}
  assert len({ex.question for ex in exp.test_examples}) == len(exp.test_examples)
  g = exp.hp.group_size
  assert samples["costs"].shape == samples["rewards"].shape == (len(examples) * g,)
  np.testing.assert_array_equal(samples["question"], np.repeat(np.arange(len(examples)), g))


@pytest.mark.parametrize("q", QUANTILES)
def test_calibrated_quantile_reads_as_q_on_the_evaluated_problems(calibrated, q):
  _, _, samples, budgets, result = calibrated
  name = f"q{round(100 * q)}"
  satisfaction = result[f"satisfaction_sampled@{name}"]
  bound = _bound(q, *_effective(samples, budgets[name], result["num_sampled"]))
  assert abs(satisfaction - q) <= bound, (q, satisfaction, bound)


def test_calibration_takes_its_own_samples_per_question():
  """`calibration_samples_per_prompt` = 2 under `rollout.group_size` = 4: 2 samples of each
  question, in passes of `calibration_batch_size` rows, each pass's costs those of its
  batch scored row by row."""
  config = tiny_config(calibration_prompts=5, calibration_batch_size=4,
                       calibration_samples_per_prompt=2, **{"rollout.group_size": 4,
                                                            "mesh.num_devices": 1})
  exp = experiment.build(config)
  state, _ = trainer.create_state(exp, exp.student.params)
  examples = calibration.calibration_examples(config)[:5]
  rng = jax.random.PRNGKey(2)
  samples = calibration.calibration_samples(exp, state.params, rng, examples)
  np.testing.assert_array_equal(samples["question"], np.repeat(np.arange(5), 2))
  # By hand: passes of 2 questions x 2 samples, the last one filled up with the first
  # question again; the rows' costs, scored one row at a time.
  padded = examples + examples[:1]
  costs = []
  for p in range(3):
    batch, _ = trainer.make_batch(exp, state.params, padded[2 * p:2 * p + 2],
                                  jax.random.fold_in(rng, 4 * p), True, 2)
    assert batch["mask"].shape[0] == 4
    costs.append(exp.score_sequences(state.params, batch)["sequence_cost"])
  np.testing.assert_allclose(samples["costs"], np.concatenate(costs)[:10], rtol=1e-5,
                             atol=1e-6)
