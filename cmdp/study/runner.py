"""Methods x seeds: the run configs, budget calibration and resumable runs.

A method is `{"name", "objective", "loss": {...}, "budget_scale"}`: the registered objective,
its loss overrides (only fields that objective reads) and the factor applied to the
calibrated budget d (1.0 for every method but the extra `cmdp` budgets). Every run of the
study shares `study.run` (batch, rollouts, new tokens, learning rate, steps), the teacher
and the initial student; seed i sets the data order and the sampling of every method, so
seed i's runs are paired.
"""
from __future__ import annotations

import copy
import json
import os
import time

import jax
import ml_collections

from cmdp.objectives import get_objective
from cmdp.objectives.registry import CONSTRAINT_FIELDS
from cmdp.study import evaluate as eval_lib
from cmdp.study import pretrain
from cmdp.training.config import set_objective

RESULT_FILE = "result.json"  # written last: its presence marks a finished run


class RunInterrupted(RuntimeError):
  """A run stopped before its final evaluation (e.g. on SIGTERM); it resumes on a rerun."""


def method_list(study: ml_collections.ConfigDict) -> list[dict]:
  """The methods as plain dicts, checked: unique names, registered objectives."""
  methods = [m.to_dict() if hasattr(m, "to_dict") else dict(m) for m in study.methods]
  names = [m.get("name") for m in methods]
  for m in methods:
    unknown = set(m) - {"name", "objective", "loss", "budget_scale"}
    if unknown or not m.get("name") or not m.get("objective"):
      raise ValueError(f"config.methods: {m!r} needs 'name' and 'objective' and may have "
                       f"'loss' and 'budget_scale' only (unknown: {sorted(unknown)}).")
    objective = get_objective(m["objective"])  # raises naming the valid objectives
    ignored = set(m.get("loss", {})) - (objective.reads | CONSTRAINT_FIELDS)
    if ignored:
      raise ValueError(f"config.methods[{m['name']!r}].loss sets {sorted(ignored)}, which "
                       f"objective {m['objective']!r} does not read; it reads "
                       f"{sorted(objective.reads | CONSTRAINT_FIELDS)}.")
  dup = sorted({n for n in names if names.count(n) > 1})
  if dup:
    raise ValueError(f"config.methods: names {dup} are repeated; give each method its own name.")
  return methods


def base_run_config(study: ml_collections.ConfigDict, workdir: str) -> ml_collections.ConfigDict:
  """`study.run` with the pretrained teacher and initial student filled in (unlocked copy)."""
  c = copy.deepcopy(study.run)
  c.unlock()
  c.tokenizer = "char"
  c.teacher.path = pretrain.hf_dir(workdir, "teacher")
  c.student.path = pretrain.hf_dir(workdir, "student")
  c.student.cut_layers = ()
  c.student.init_workdir = ""
  c.data.task_kwargs = ml_collections.ConfigDict(study.task.to_dict())
  # model_fns reads the response cap; the study passes its own examples and batch size.
  c.eval.max_new_tokens = study.eval.max_new_tokens
  c.eval.batch_size = study.eval.batch_size
  c.eval.pass_k = study.eval.pass_k
  return c


def run_config(study, workdir: str, method: dict, seed: int,
               budgets: dict) -> ml_collections.ConfigDict:
  """The trainer config of `method` at `seed`; `budgets` maps (cost, constraint) to d."""
  c = base_run_config(study, workdir)
  set_objective(c, method["objective"])  # with its preset (worst_case: teacher_nll, ...)
  c.seed = int(seed)
  for key, value in method.get("loss", {}).items():  # only fields it reads (method_list)
    c.loss[key] = value
  kind = (c.loss.cost, c.loss.constraint)
  if kind not in budgets:
    raise ValueError(f"run_config: no calibrated budget for cost/constraint {kind}; "
                     "calibrate_budgets() must see every method.")
  c.loss.budget = float(budgets[kind]) * float(method.get("budget_scale", 1.0))
  c.calibrate_budget_quantile = 0.0
  c.eval_at_end = True  # the study's own evaluation runs as the end-of-run hook
  c.eval_every = 0
  c.progress_bar = False
  c.lock()
  return c


def constraint_kinds(study, methods: list[dict]) -> list[tuple[str, str]]:
  """The distinct (cost, constraint) pairs the methods train on, the study's own first."""
  base = study.run.loss
  kinds = [(base.cost, base.constraint)]
  for m in methods:
    loss = {**get_objective(m["objective"]).preset, **m.get("loss", {})}
    kind = (loss.get("cost", base.cost), loss.get("constraint", base.constraint))
    if kind not in kinds:
      kinds.append(kind)
  return kinds


def calibrate_budgets(study, workdir: str, methods: list[dict]) -> dict:
  """d for each constraint kind: `study.calibration.quantile` of the initial student's
  per-sequence cost on sampled training responses (cached in `DIR/calibration.json`)."""
  from cmdp.training import experiment, trainer  # pylint: disable=g-import-not-at-top
  path = os.path.join(workdir, "calibration.json")
  cached = json.load(open(path)) if os.path.exists(path) else {}
  out = {}
  for cost, constraint in constraint_kinds(study, methods):
    key = f"{cost}/{constraint}"
    if key not in cached:
      c = base_run_config(study, workdir)
      set_objective(c, "cmdp")  # reads every cost and constraint; only measured here
      c.loss.cost, c.loss.constraint = cost, constraint
      c.calibrate_budget_quantile = study.calibration.quantile
      c.calibration_prompts = study.calibration.prompts
      c.lock()
      exp = experiment.build(c)
      cached[key] = trainer.calibrate_budget(exp, exp.student.params,
                                             jax.random.PRNGKey(study.calibration.seed))
      with open(path, "w") as f:
        json.dump(cached, f, indent=2)
    out[(cost, constraint)] = float(cached[key])
  return out


def run_dir(workdir: str, method: str, seed: int) -> str:
  return os.path.join(workdir, "runs", method, f"seed{seed}")


def run_one(study, workdir: str, method: dict, seed: int, budgets: dict,
            test_examples: list) -> dict:
  """Trains and evaluates one (method, seed), or reads its finished result."""
  from cmdp.training import trainer  # pylint: disable=g-import-not-at-top
  out_dir = run_dir(workdir, method["name"], seed)
  result_path = os.path.join(out_dir, RESULT_FILE)
  if os.path.exists(result_path):
    with open(result_path) as f:
      return json.load(f)
  config = run_config(study, workdir, method, seed, budgets)
  cost, constraint = study.run.loss.cost, study.run.loss.constraint
  d = budgets[(cost, constraint)]
  captured = {}

  def evaluate_fn(exp, params, step, hp):
    del step
    captured.update(eval_lib.evaluate(exp, params, "student",
                                      eval_lib.study_hp(hp, cost, constraint, d), test_examples,
                                      batch_size=study.eval.batch_size,
                                      pass_k=study.eval.pass_k))
    return {f"eval/student/{k}": v for k, v in captured.items()
            if isinstance(v, (int, float))}

  t0 = time.perf_counter()
  last = trainer.train(config, out_dir, evaluate_fn=evaluate_fn)
  if not captured:  # stopped early (SIGTERM): no final evaluation, so not finished
    raise RunInterrupted(f"{method['name']} seed {seed} stopped before its final evaluation "
                         f"(checkpoint in {out_dir}); rerun the study to resume it.")
  metrics = dict(captured)
  lam = _lambda(method, config, last)
  if lam is not None:
    metrics["lambda"] = lam
  result = {"method": method["name"], "objective": method["objective"], "seed": int(seed),
            "budget": float(config.loss.budget), "study_budget": float(d), "metrics": metrics,
            "train_last": {k: float(v) for k, v in last.items()},
            "wall_s": time.perf_counter() - t0}
  with open(result_path + ".tmp", "w") as f:
    json.dump(result, f, indent=2)
  os.replace(result_path + ".tmp", result_path)
  return result


def _lambda(method: dict, config, last: dict) -> float | None:
  """The method's multiplier: soft_lagrangian's fixed one, dual_lagrangian's last logged."""
  if method["objective"] == "soft_lagrangian":
    return float(config.loss.soft_lambda)
  if method["objective"] == "dual_lagrangian" and "train/lambda" in last:
    return float(last["train/lambda"])
  return None
