"""Budget calibration: `calibrate_budget_quantile` of the initial student's per-sequence cost
`C(y)` on held-out problems drawn as the evaluated ones are.

The problems are the test split's calibration part (`cmdp.data.heldout`):
`calibration_prompts` distinct questions, disjoint from the training split and from the
evaluated part (`data.test_size`), the two parts made alike from the same draws (the
distinct questions paired by how often they were drawn, one of each pair to each part). The
budget is read on the evaluated part, so it is calibrated on a sample of the same
distribution: at quantile `q`, about a share `q` of the initial student's evaluated samples
fall within it, up to the sampling error of both samples (tested). The training prompts, with
their repeats and their other questions, are not such a sample.

Each question is sampled `rollout.group_size` times at the training temperature, in passes of
`calibration_batch_size` (else `batch_size`) samples; in a multi-process run each process
samples and scores its own block of every pass and every process gets all the samples.
"""
from __future__ import annotations

import jax
import ml_collections
import numpy as np
from jax.sharding import PartitionSpec as P

from cmdp import constraint
from cmdp.evaluation import stats
from cmdp.training import experiment as experiment_lib
from cmdp.training.processes import process_rows, process_shard, rows_over_processes
from cmdp.training.rollouts import make_batch


def calibration_examples(config: ml_collections.ConfigDict) -> list:
  """The held-out calibration problems of `config` (distinct questions, draw order)."""
  return experiment_lib._load_split(config, "calibration")  # pylint: disable=protected-access


def calibration_samples(exp: experiment_lib.Experiment, params, rng,
                        examples: list | None = None) -> dict:
  """`calibration_samples_per_prompt` samples (0: `rollout.group_size`) of the student
  `params` on each of `examples` (default the calibration problems,
  `calibration_examples`): `{"costs", "rewards", "question"}`, one
  entry per sample, the cost `C(y)` of the constraint of `exp.hp`, the task reward and the
  index of the sample's problem in `examples`. The same on every process."""
  cfg = exp.config
  g = cfg.calibration_samples_per_prompt or exp.hp.group_size
  examples = calibration_examples(cfg) if examples is None else list(examples)
  if not examples:
    raise ValueError("calibration_samples: no calibration problems.")
  rows = cfg.calibration_batch_size or cfg.batch_size  # per sampling and scoring pass
  per_pass = rows // g
  index, count = process_shard()
  if per_pass % count:
    raise ValueError(f"config.calibration_batch_size: {per_pass} prompts per pass do not "
                     f"split over {count} processes; use a multiple of the process count.")
  n = len(examples)
  passes = -(-n // per_pass)
  padded = [examples[i % n] for i in range(passes * per_pass)]  # the last pass filled up
  # Placed as the train state's key is, so the rollouts reuse the training sampler's program.
  rng = jax.device_put(rng, jax.sharding.NamedSharding(exp.student_mesh, P()))
  costs, rewards = [], []
  part = per_pass // count
  for p in range(passes):
    block = padded[p * per_pass:(p + 1) * per_pass][index * part:(index + 1) * part]
    batch, _ = make_batch(exp, params, block, jax.random.fold_in(rng, p * rows), True, g)
    scores = exp.score_sequences(params, batch, group_size=g)
    costs.append(rows_over_processes(scores["sequence_cost"]))
    rewards.append(rows_over_processes(np.asarray(process_rows(batch["task_reward"]))))
  return {"costs": np.concatenate(costs)[:n * g].astype(np.float64),
          "rewards": np.concatenate(rewards)[:n * g].astype(np.float64),
          "question": np.repeat(np.arange(n), g)}


def calibration_costs(exp: experiment_lib.Experiment, params, rng,
                      examples: list | None = None) -> np.ndarray:
  """The per-sequence costs `C(y)` of `calibration_samples`."""
  return calibration_samples(exp, params, rng, examples)["costs"]


def calibrate_budget(exp: experiment_lib.Experiment, params, rng) -> float:
  """`calibrate_budget_quantile` of the initial student's per-sequence cost `C(y)`
  (`calibration_costs`)."""
  return calibrate(exp, params, rng)[0]


def calibrate(exp: experiment_lib.Experiment, params, rng) -> tuple[float, str]:
  """`(budget d, a line that says what it was calibrated on)`: the budget of
  `calibrate_budget`, and the samples' corr(R, C) and cost quantiles of right and wrong
  answers (`stats.reward_cost`)."""
  cfg = exp.config
  _, examples, dropped = experiment_lib.heldout_parts(cfg)
  samples = calibration_samples(exp, params, rng, examples)
  q = cfg.calibrate_budget_quantile
  budget = constraint.calibrate_budget(samples["costs"], q)
  return budget, (f"budget d = {budget:.4g} ({exp.hp.cost}, {exp.hp.constraint}): the {q:g} "
                  f"quantile of {samples['costs'].size} samples of the initial student on "
                  f"{len(examples)} held-out calibration questions; {describe(samples)}; "
                  f"evaluation on {len(exp.test_examples)} other held-out questions (each "
                  f"once: {dropped} repeated draws of the test split dropped)")


def describe(samples: dict) -> str:
  """`corr(R, C) 0.12 (Spearman 0.10); C q10/q50/q90 of right answers ..., of wrong ...`."""
  joint = stats.reward_cost(samples["rewards"], samples["costs"])
  fmt = lambda v: "-" if v is None else f"{v:.3g}"
  parts = [f"corr(R, C) {fmt(joint['corr_pearson'])} (Spearman "
           f"{fmt(joint['corr_spearman'])})"]
  for answer in ("right", "wrong"):
    parts.append(f"C q10/q50/q90 of {joint[f'num_{answer}']} {answer} answers "
                 + "/".join(fmt(joint[f"cost_{answer}_q{k}"]) for k in (10, 50, 90)))
  return "; ".join(parts)
