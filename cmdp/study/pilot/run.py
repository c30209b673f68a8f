"""The pilot's stages and runs: the study's shared stages with its calibration at the
pilot's candidate quantiles, then grpo at every (setting, seed), resumably, then the report.

Everything lives in the pilot's workdir, laid out as the study's (`cmdp.study.compare`):
`calibration.json`, `initial_eval.json`, `runs/grpo/lr<lr>_steps<n>/seed<s>/`. A finished
run is read, not rerun; a run stopped by SIGTERM resumes from its checkpoint.
"""
from __future__ import annotations

import copy
import os
import time

import ml_collections
import tqdm

from cmdp.study import compare, protocol, runner
from cmdp.study.pilot import analysis, report


def pilot_study(study: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`study` with its budgets at the pilot's candidate quantiles, checked: the pilot's
  seeds are none of the comparison's (0 .. seeds - 1)."""
  pilot = study.pilot
  shared = sorted(set(pilot.seeds) & set(range(study.seeds)))
  if shared:
    raise ValueError(f"config.pilot.seeds {list(pilot.seeds)} include the comparison's seeds "
                     f"{shared} (0 .. config.seeds - 1): give the pilot seeds of its own.")
  out = copy.deepcopy(study)
  out.unlock()
  out.budget_quantiles = tuple(pilot.quantiles)
  return out


def setting_config(healed: ml_collections.ConfigDict, setting) -> ml_collections.ConfigDict:
  """The shared run config at a setting's learning rate and steps."""
  c = copy.deepcopy(healed)
  c.unlock()
  c.optimizer.learning_rate = float(setting["learning_rate"])
  c.num_steps = int(setting["num_steps"])
  return c


def check_budgets(workdir: str, budgets: dict, initial: dict, quantiles) -> None:
  """Refuses a workdir whose calibration or initial evaluation lacks a candidate budget
  (one made by a study at other quantiles)."""
  names = [protocol.budget_name(q) for q in quantiles]
  absent = [b for b in names
            if b not in budgets or f"satisfaction_sampled@{b}" not in initial["student"]]
  if absent:
    raise ValueError(f"{workdir}: its calibration.json / initial_eval.json have no budget "
                     f"{', '.join(absent)} (made at other quantiles); run the pilot in a "
                     "workdir of its own, or delete those two files there.")


def run_pilot(study: ml_collections.ConfigDict, workdir: str, command: str) -> dict:
  """Runs (or resumes) the pilot and writes its report (`report.write`, in the study's
  report directory); returns the JSON payload."""
  t0 = time.perf_counter()
  ps = pilot_study(study)
  os.makedirs(workdir, exist_ok=True)
  if ps.get("compilation_cache"):
    compare.enable_compilation_cache(os.path.join(workdir, "jax_cache"))
  healed, budgets, initial = compare.prepare(ps, workdir)
  check_budgets(workdir, budgets, initial, ps.budget_quantiles)
  pilot = ps.pilot.to_dict()
  jobs = [(s, seed) for s in pilot["settings"] for seed in pilot["seeds"]]
  finished = lambda s, seed: os.path.exists(os.path.join(
      runner.run_dir(workdir, analysis.setting_name(s), seed), runner.RESULT_FILE))
  bar = tqdm.tqdm(total=len(jobs), initial=sum(finished(*j) for j in jobs), unit="run",
                  desc="pilot runs (grpo)", dynamic_ncols=True)
  results = []
  for setting, seed in jobs:
    was_done = finished(setting, seed)
    results.append(compare.run_one(ps, workdir, setting_config(healed, setting),
                                   analysis.method(setting), seed, budgets))
    if not was_done:
      bar.update(1)
  bar.close()
  found = analysis.analyse(pilot, results, initial["student"])
  return report.write(ps, compare.report_dir(ps, workdir), pilot, found, results, budgets,
                      initial["student"], command, time.perf_counter() - t0)
