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

import dataclasses
import time
from typing import Sequence

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


@dataclasses.dataclass(frozen=True)
class Calibration:
  """Budgets calibrated on held-out problems: `budgets[i]` the `quantiles[i]` quantile of
  the initial student's per-sequence costs in `samples` (`calibration_samples`) on
  `num_questions` problems; `dropped` the repeated draws of the test split left out when
  they are the run's own calibration part (else None); `wall_s` the time it took."""
  quantiles: tuple[float, ...]
  budgets: tuple[float, ...]
  samples: dict
  num_questions: int
  dropped: int | None
  wall_s: float


def calibrate_budget(exp: experiment_lib.Experiment, params, rng) -> float:
  """`calibrate_budget_quantile` of the initial student's per-sequence cost `C(y)`
  (`calibration_costs`)."""
  return calibrate(exp, params, rng).budgets[0]


def calibrate(exp: experiment_lib.Experiment, params, rng, quantiles: Sequence[float] = (),
              examples: list | None = None) -> Calibration:
  """The budgets at `quantiles` (default the config's `calibrate_budget_quantile`) of
  `calibration_samples` of the student `params` on `examples` (default the run's held-out
  calibration part), each `constraint.calibrate_budget` of the samples' costs."""
  t0 = time.perf_counter()
  quantiles = tuple(quantiles) or (exp.config.calibrate_budget_quantile,)
  dropped = None
  if examples is None:
    _, examples, dropped = experiment_lib.heldout_parts(exp.config)
  samples = calibration_samples(exp, params, rng, examples)
  budgets = tuple(constraint.calibrate_budget(samples["costs"], q) for q in quantiles)
  return Calibration(quantiles=quantiles, budgets=budgets, samples=samples,
                     num_questions=len(examples), dropped=dropped,
                     wall_s=time.perf_counter() - t0)


def summary(exp: experiment_lib.Experiment, cal: Calibration) -> str:
  """What a run's budget was calibrated on: its quantile, the samples, their corr(R, C) and
  cost quantiles of right and wrong answers (`describe`) and the evaluated problems."""
  return (f"budget d = {cal.budgets[0]:.4g} ({exp.hp.cost}, {exp.hp.constraint}): the "
          f"{cal.quantiles[0]:g} quantile of {cal.samples['costs'].size} samples of the "
          f"initial student on {cal.num_questions} held-out calibration questions; "
          f"{describe(cal.samples)}; evaluation on {len(exp.test_examples)} other held-out "
          f"questions (each once: {cal.dropped} repeated draws of the test split dropped)")


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
