"""A pre-registered comparison (`cmdp.study.protocol`): one teacher and initial student, one
calibration shared by every run, the protocol's methods x seeds, then their analysis
(`cmdp.study.analysis`) and its report (`cmdp.study.report`: Pareto fronts, diagnostics and
the verdict by the rules).

    python -m cmdp.study --config configs/study_smollm2.py --workdir DIR
    python -m cmdp.study --config configs/study_arith.py --workdir DIR

The models come from the config's trainer config `run` (a real LLM: the main job's teacher
and its student, healed once in DIR/heal) or, when the config has a `pretrain` section,
from a cached supervised stage that trains both from scratch (`cmdp.study.pretrain`, in
DIR/pretrain). In DIR also: `calibration.json` (the initial student's sampled costs and
task rewards on the held-out calibration problems, `calibration_examples`, drawn as the
evaluated ones are; corr(R, C) and the cost quantiles of right and wrong answers; the
budgets at the protocol's quantiles, `constraint.calibrate_budget`), `initial_eval.json`
(teacher and initial student), `runs/<method>/seed<i>/` with each run's `result.json` and `metrics.jsonl`. Re-running skips
what is finished; a run stopped by SIGTERM resumes from its checkpoint, which is deleted
once the run's result is written unless the config sets `keep_run_checkpoints`.
"""
from __future__ import annotations

import copy
import json
import os
import shutil
import time

import ml_collections
import numpy as np
import tqdm

from cmdp.data import heldout
from cmdp.evaluation import stats as eval_stats
from cmdp.study import evaluate as eval_lib
from cmdp.study import analysis, pretrain, protocol, report, runner
from cmdp.training import logging as log_lib
from cmdp.training.config import set_objective

def base_config(study: ml_collections.ConfigDict, workdir: str) -> ml_collections.ConfigDict:
  """`study.run` (with the pretrained models when the study has a supervised stage), the
  study's shared heal directory and no per-run baselines."""
  if "pretrain" in study:
    c = runner.base_run_config(study, workdir)
  else:
    c = copy.deepcopy(study.run)
    c.unlock()
  c.heal.dir = os.path.join(workdir, "heal")
  c.eval.include_teacher = c.eval.include_initial_student = False
  c.calibrate_budget_quantile = 0.0
  c.progress_bar = False
  return c


def _json(path: str):
  if os.path.exists(path):
    with open(path) as f:
      return json.load(f)
  return None


def _write_json(path: str, value) -> None:
  with open(path + ".tmp", "w") as f:
    json.dump(value, f, indent=2)
  os.replace(path + ".tmp", path)


def test_examples(study, exp) -> list:
  """The held-out problems every model is evaluated on: the run config's (its test split's
  evaluated part, `cmdp.data.heldout`), or for a study with its own task, the evaluated part
  of its test split (`study.eval.num_examples` questions); each question once."""
  if "task" in study:
    return _heldout_parts(study)[0]
  return exp.test_examples


def _heldout_parts(study) -> tuple[list, list, int]:
  """A study's own task: the evaluated and calibration parts of its test split
  (`heldout.load_parts`: `eval.num_examples` and `run.calibration_prompts` questions)."""
  return heldout.load_parts(study.run.data.test, study.eval.num_examples,
                            study.run.calibration_prompts, study.eval.data_seed,
                            **study.task.to_dict())


def calibration_examples(study, healed) -> list:
  """The held-out problems the budgets are calibrated on: the calibration part of the test
  split every model is evaluated on (`test_examples`), `run.calibration_prompts` questions,
  each once; disjoint from the training and the evaluated problems."""
  from cmdp.training import calibration  # pylint: disable=g-import-not-at-top
  if "task" in study:
    return _heldout_parts(study)[1]
  return calibration.calibration_examples(healed)


def prepare(study, workdir: str):
  """The shared stages: the supervised stage or the heal, calibration, and the teacher's
  and initial student's evaluation. Returns `(healed config, budgets {name: d}, initial
  {teacher, student, pretrain})`.

  The heal, the models, the initial student and the calibration are the trainer's stages
  (`trainer.heal`, `cmdp.training.stages`), given the study's calibration problems, seed
  and quantiles; calibration.json and initial_eval.json keep what they found.
  """
  from cmdp.training import trainer  # pylint: disable=g-import-not-at-top
  stage = ({role: pretrain.run_stage(study, workdir, role) for role in pretrain.ROLES}
           if "pretrain" in study else None)
  if stage and None in stage.values():
    raise runner.RunInterrupted("The supervised stage stopped (SIGTERM); rerun the study to "
                                "resume it.")
  healed = trainer.heal(base_config(study, workdir), workdir)
  if healed is None:
    raise runner.RunInterrupted("The heal stopped (SIGTERM); rerun the study to resume it.")
  start = None  # the initial student's run, built once when a cached file is missing
  cal_path = os.path.join(workdir, "calibration.json")
  cal = _json(cal_path)
  if cal is None:
    t0 = time.perf_counter()
    start = _initial_run(healed)
    cal = _calibrate(study, start, calibration_examples(study, healed), t0)
    _write_json(cal_path, cal)
  budgets = cal["budgets"]
  init_path = os.path.join(workdir, "initial_eval.json")
  initial = _json(init_path)
  if initial is None:
    t0 = time.perf_counter()
    if start is None:
      start = _initial_run(healed)
    initial = _initial_eval(study, start, budgets)
    initial.update(pretrain=stage, wall_s=time.perf_counter() - t0)
    _write_json(init_path, initial)
    log_lib.stage("evaluate", f"teacher {initial['teacher']['accuracy']:.1%}, initial student "
                  f"{initial['student']['accuracy']:.1%} greedy on "
                  f"{initial['student']['num_examples']} problems ({initial['wall_s']:.0f} s)")
  del start
  trainer.release_host_memory()
  return healed, budgets, initial


def _initial_run(healed):
  """The trainer's stages "load" (silent: the study's runs say it) and "init" of the
  healed config: the study's initial student at step 0."""
  from cmdp.training import stages  # pylint: disable=g-import-not-at-top
  return stages.init_or_restore(stages.load(_locked(healed), say=False))


def _calibrate(study, start, examples: list, t0: float) -> dict:
  """The trainer's stage "calibrate" at the study's quantiles, on `examples` with its
  calibration seed: calibration.json's record (budgets by name, the samples, corr(R, C)),
  `wall_s` counted from `t0`."""
  import jax  # pylint: disable=g-import-not-at-top
  from cmdp.training import calibration, stages  # pylint: disable=g-import-not-at-top
  names = [protocol.budget_name(q) for q in study.budget_quantiles]
  loss = start.exp.config.loss

  def say(exp, c):
    del exp
    return ("budgets " + ", ".join(f"{k}: d = {v:.4g}" for k, v in zip(names, c.budgets))
            + f" ({loss.cost}, {loss.constraint}; {c.samples['costs'].size} samples of "
            f"{c.num_questions} held-out calibration questions; "
            f"{calibration.describe(c.samples)}; {time.perf_counter() - t0:.0f} s)")

  _, c = stages.calibrate(start, study.budget_quantiles, examples=examples, say=say,
                          rng=jax.random.PRNGKey(study.calibration.seed))
  costs, rewards = c.samples["costs"], c.samples["rewards"]
  return dict(cost=loss.cost, constraint=loss.constraint, num_samples=int(costs.size),
              num_questions=c.num_questions, budgets=dict(zip(names, c.budgets)),
              reward_cost=eval_stats.reward_cost(rewards, costs), costs=costs.tolist(),
              rewards=rewards.tolist(), wall_s=time.perf_counter() - t0)


def _initial_eval(study, start, budgets: dict) -> dict:
  """The teacher and the initial student (the `start` run's params) on the study's
  evaluated problems, measured against the first budget (`eval_lib.study_hp`)."""
  exp = start.exp
  hp = eval_lib.study_hp(exp.hp, exp.config.loss.cost, exp.config.loss.constraint,
                         budgets[protocol.budget_name(study.budget_quantiles[0])])
  kw = dict(batch_size=study.eval.batch_size, pass_k=study.eval.pass_k, other_budgets=budgets)
  examples = test_examples(study, exp)
  return {"teacher": eval_lib.evaluate(exp, exp.teacher.params, "teacher", hp, examples, **kw),
          "student": eval_lib.evaluate(exp, start.state.params, "student", hp, examples, **kw)}


def _locked(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  c = copy.deepcopy(c)
  c.lock()
  return c


def run_config(study, healed, method: dict, seed: int, budgets: dict):
  """The trainer config of `method` at `seed` (the protocol's knobs applied)."""
  c = copy.deepcopy(healed)
  c.unlock()
  set_objective(c, method["objective"])
  c.seed = int(seed)
  for key, value in method.get("loss", {}).items():
    c.loss[key] = value
  # The anchors do not read d; their config still needs a valid one.
  name = method.get("budget") or protocol.budget_name(study.budget_quantiles[0])
  d = float(budgets[name])
  c.loss.budget = d
  for key, value in method.get("per_budget", {}).items():
    c.loss[key] = float(value) / d  # e.g. soft_lambda = (lambda d) / d
  quantile = {protocol.budget_name(q): q for q in study.budget_quantiles}[name]
  for key, value in protocol.rate_fields(method, quantile).items():
    c.loss[key] = value  # e.g. the dual's violation_target: the initial rate 1 - q
  c.eval_at_end = True
  c.eval_every = 0
  c.lock()
  return c


def diagnostics(run_dir: str) -> dict:
  """A run's training diagnostics: the mean over its logged steps of each key of
  `report.DIAGNOSTICS`, and its probe's first and last satisfaction and KL median."""
  rows = log_lib.read_metrics(run_dir)
  out = {}
  for key, _, _ in report.DIAGNOSTICS:
    values = [r[key] for r in rows if key in r and np.isfinite(r[key])]
    if values:
      out[key] = float(np.mean(values))
  probes = [r for r in rows if "probe/constraint_satisfaction" in r]
  if probes:
    for tag, row in (("first", probes[0]), ("last", probes[-1])):
      out[f"probe/{tag}_satisfaction"] = row["probe/constraint_satisfaction"]
      out[f"probe/{tag}_kl_q50"] = row["probe/kl_seq_q50"]
  return out


def run_one(study, workdir: str, healed, method: dict, seed: int, budgets: dict) -> dict:
  """Trains and evaluates one (method, seed), or reads its finished result."""
  from cmdp.training import trainer  # pylint: disable=g-import-not-at-top
  out_dir = runner.run_dir(workdir, method["name"], seed)
  path = os.path.join(out_dir, runner.RESULT_FILE)
  done = _json(path)
  if done is not None:
    return done
  config = run_config(study, healed, method, seed, budgets)
  captured = {}

  def evaluate_fn(exp, params, step, hp):
    del step
    captured.update(eval_lib.evaluate(exp, params, "student", hp, test_examples(study, exp),
                                      batch_size=study.eval.batch_size,
                                      pass_k=study.eval.pass_k, other_budgets=budgets))
    return {f"eval/student/{k}": v for k, v in captured.items() if isinstance(v, (int, float))}

  t0 = time.perf_counter()
  last = trainer.train(config, out_dir, evaluate_fn=evaluate_fn)
  if not captured:
    raise runner.RunInterrupted(f"{method['name']} seed {seed} stopped before its final "
                                f"evaluation (checkpoint in {out_dir}); rerun to resume it.")
  result = {"method": method["name"], "objective": method["objective"], "seed": int(seed),
            "budget": float(config.loss.budget), "metrics": dict(captured),
            "diagnostics": diagnostics(out_dir),
            "train_last": {k: float(v) for k, v in last.items()},
            "wall_s": time.perf_counter() - t0}
  _write_json(path, result)
  if not study.get("keep_run_checkpoints", False):
    # The result is final; the checkpoint only served to resume the run (about 1 GB for
    # the SmolLM2 student with its optimiser state: 60 runs filled 63 GB).
    shutil.rmtree(os.path.join(out_dir, "checkpoints"), ignore_errors=True)
  trainer.release_host_memory()
  return result


def enable_compilation_cache(path: str) -> None:
  """JAX's persistent compilation cache: every run after the first reuses its compiled
  sampler and step (the same shapes; only the loss's constants differ by method)."""
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)


def run_study(study: ml_collections.ConfigDict, workdir: str, command: str) -> dict:
  """Runs (or resumes) the comparison and writes its report; returns the JSON payload."""
  protocol.require_choice(study)  # a declared pilot must have chosen before the comparison
  t0 = time.perf_counter()
  os.makedirs(workdir, exist_ok=True)
  if study.get("compilation_cache"):
    enable_compilation_cache(os.path.join(workdir, "jax_cache"))
  methods = runner.method_list(study)
  healed, budgets, initial = prepare(study, workdir)
  jobs = [(m, s) for s in range(study.seeds) for m in methods]
  finished = lambda m, s: os.path.exists(
      os.path.join(runner.run_dir(workdir, m["name"], s), runner.RESULT_FILE))
  done = sum(finished(m, s) for m, s in jobs)  # earlier invocations' runs: read, not rerun
  bar = tqdm.tqdm(total=len(jobs), initial=done, desc="study runs", unit="run",
                  dynamic_ncols=True)
  results = []
  for m, s in jobs:
    was_done = finished(m, s)
    results.append(run_one(study, workdir, healed, m, s, budgets))
    if not was_done:
      bar.update(1)
  bar.close()
  return write_report(study, workdir, methods, results, budgets, initial, command,
                      time.perf_counter() - t0)


def report_dir(study, workdir: str) -> str:
  """Where the report goes: `study.output_dir`, or `<workdir>/results`."""
  return study.output_dir or os.path.join(workdir, "results")


def write_report(study, workdir, methods, results, budgets, initial, command, wall_s) -> dict:
  """The analysis of the runs (`analysis.analyse`) and its report (`report.write`):
  `<name>.md`, `<name>.png` and `<name>.json` in the output directory; returns the JSON
  payload."""
  found = analysis.analyse(study, methods, results, budgets, initial)
  return report.write(study, report_dir(study, workdir), found, methods, results, budgets,
                      initial, command, wall_s)
