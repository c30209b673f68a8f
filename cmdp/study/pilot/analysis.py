"""The pilot's analysis, apart from its rendering: per setting, grpo's change in sampled
satisfaction from the initial student at each candidate budget (seed mean, t-interval over
seeds, the per-seed values), and the choice by the declared rule (`choose`).

Pure: no file is read or written, and the result is JSON-serialisable (intervals as
`{"mean", "lo", "hi", "half", "n"}` dicts, NaN as None).
"""
from __future__ import annotations

from typing import Mapping, Sequence

from cmdp.evaluation.stats import t_interval
from cmdp.study import protocol
from cmdp.study.analysis import plain

SATISFACTION = "satisfaction_sampled"  # the rule's metric, read at each candidate budget
TOL = 1e-9  # the rule's edges are met exactly at the edge, as the study's rules are


def setting_name(setting: Mapping) -> str:
  """`grpo/lr0.0001_steps40`: a setting's method name (and run directory)."""
  return f"grpo/lr{setting['learning_rate']:g}_steps{setting['num_steps']}"


def method(setting: Mapping) -> dict:
  """The study method that trains grpo at `setting` (an anchor: it reads no budget)."""
  return dict(name=setting_name(setting), objective="grpo", family="grpo", loss={},
              per_budget={}, budget=None)


def changes(pilot: Mapping, results: Sequence[Mapping], initial: Mapping) -> list[dict]:
  """Per setting of `pilot["settings"]` (in the declared order): `{"name", "learning_rate",
  "num_steps", "seeds", "change": {budget: {"per_seed": [...], "interval": {...}}}}`, the
  change being the final sampled satisfaction minus the initial student's (`initial`'s
  `satisfaction_sampled@<budget>`), a fraction, for the pilot's seeds that finished."""
  runs = {(r["method"], r["seed"]): r["metrics"] for r in results}
  out = []
  for setting in pilot["settings"]:
    name = setting_name(setting)
    seeds = [s for s in pilot["seeds"] if (name, s) in runs]
    change = {}
    for q in pilot["quantiles"]:
      b = protocol.budget_name(q)
      key = f"{SATISFACTION}@{b}"
      per_seed = [runs[(name, s)][key] - initial[key] for s in seeds]
      change[b] = dict(per_seed=per_seed, interval=plain(t_interval(per_seed)))
    out.append(dict(name=name, learning_rate=setting["learning_rate"],
                    num_steps=setting["num_steps"], seeds=seeds, change=change))
  return out


def _loss(row: Mapping, budget: str) -> float:
  """The seed-mean fall of satisfaction at `budget` (positive: it fell)."""
  return -row["change"][budget]["interval"]["mean"]


def choose(pilot: Mapping, table: Sequence[Mapping]) -> dict:
  """The declared rule on the table of `changes`.

  The setting is the first of `table` (least stress first) whose stress reaches
  `pilot["stress_points"]`: its seed-mean fall at the budget `pilot["target"]` (a budget
  name), or with `target = "lower"` the largest seed-mean fall among the lower candidates
  `pilot["lower"]`. If none reaches it, the last setting (`met` False). The lower budget is
  the candidate with the largest seed-mean fall at the chosen setting (ties: the higher
  quantile).

  Returns `{"setting", "learning_rate", "num_steps", "quantile", "budget", "met", "stress",
  "target", "lower_losses": {budget: fall}}`.
  """
  lower = [protocol.budget_name(q) for q in pilot["lower"]]

  def stress(row):
    if pilot["target"] == "lower":
      return max(_loss(row, b) for b in lower)
    return _loss(row, pilot["target"])

  met = [row for row in table if stress(row) >= pilot["stress_points"] - TOL]
  row = met[0] if met else table[-1]
  losses = {b: _loss(row, b) for b in lower}
  top = max(losses.values())
  quantile = max(q for q in pilot["lower"] if losses[protocol.budget_name(q)] >= top - TOL)
  return dict(setting=row["name"], learning_rate=row["learning_rate"],
              num_steps=row["num_steps"], quantile=quantile,
              budget=protocol.budget_name(quantile), met=bool(met), stress=stress(row),
              target=pilot["target"], lower_losses=losses)


def analyse(pilot: Mapping, results: Sequence[Mapping], initial: Mapping) -> dict:
  """`{"settings": changes(...), "missing": ["<setting> seed <s>", ...], "choice":
  choose(...) or None}`: the rule chooses only once every setting has every pilot seed."""
  table = changes(pilot, results, initial)
  missing = [f"{row['name']} seed {s}" for row in table for s in pilot["seeds"]
             if s not in row["seeds"]]
  return dict(settings=table, missing=missing,
              choice=None if missing else choose(pilot, table))
