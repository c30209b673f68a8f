"""A study's analysis, apart from its rendering: per budget, the per-seed figures, the
decisions by the declared rules (`protocol.decide`), the seed summaries and the paired
differences from grpo, as plain data.

`analyse` is pure (no file is read or written) and its result JSON-serialisable: intervals
are `{"mean", "lo", "hi", "half", "n"}` dicts, NaN written as None. The report
(`cmdp.study.report`) and the README's quotes (`cmdp.study.quote`) both render it.
"""
from __future__ import annotations

import math
import numbers
from typing import Mapping

import numpy as np

from cmdp.evaluation.stats import Interval
from cmdp.study import protocol, stats

# The metrics paired with grpo's over shared seeds (exploratory: no declared rule reads them);
# the first also counts the seeds in which a setting fell below grpo.
PAIRED = ("satisfaction_sampled", "accuracy_greedy")
REFERENCE = "grpo"  # the anchor the paired differences are taken from


def plain(obj):
  """Intervals as dicts, NaN as None: a structure `json.dump` writes (strict JSON)."""
  if isinstance(obj, Interval):
    return {k: plain(v) for k, v in obj._asdict().items()}
  if isinstance(obj, np.generic):
    return plain(obj.item())
  if isinstance(obj, Mapping):
    return {str(k): plain(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [plain(v) for v in obj]
  if isinstance(obj, float) and math.isnan(obj):
    return None
  return obj


def per_budget(methods: list[dict], results: list[dict], budget: str) -> dict:
  """`{method: {seed: metrics read at budget, with its diagnostics}}` of the runs that budget
  concerns: its own settings and the anchors (which do not read d)."""
  by_name = {m["name"]: m for m in methods}
  out = {}
  for r in results:
    if by_name[r["method"]]["budget"] in (budget, None):
      metrics = protocol.at_budget(r["metrics"], budget)
      metrics.update(r.get("diagnostics", {}))
      out.setdefault(r["method"], {})[r["seed"]] = metrics
  return out


def _numeric(per_seed: dict) -> tuple[str, ...]:
  """The numeric metric keys any run has, in first-seen order."""
  keys = {}
  for seeds in per_seed.values():
    for metrics in seeds.values():
      keys.update((k, None) for k, v in metrics.items()
                  if isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_)))
  return tuple(keys)


def paired_against(per_seed: dict, reference: str = REFERENCE) -> tuple[dict, dict]:
  """Each method's paired difference from `reference` over their shared seeds
  (`stats.paired_differences` on `PAIRED`), and `{method: {"below": k, "seeds": n}}`: in k
  of the n shared seeds its `PAIRED[0]` fell below the reference's. `({}, {})` without the
  reference."""
  if reference not in per_seed:
    return {}, {}
  paired = stats.paired_differences(per_seed, reference, PAIRED)
  ref, key = per_seed[reference], PAIRED[0]
  below = {}
  for method in paired:
    shared = sorted(set(per_seed[method]) & set(ref))
    below[method] = dict(below=sum(per_seed[method][s][key] < ref[s][key] for s in shared),
                         seeds=len(shared))
  return plain(paired), below


def most_satisfied(methods: list[dict], summary: dict, budget: str) -> dict:
  """`{family: name}`: each family's setting at `budget` with the highest seed-mean sampled
  satisfaction (the first of equals, in the methods' order)."""
  out = {}
  for m in methods:
    name, family = m["name"], m["family"]
    if m["budget"] != budget or "satisfaction_sampled" not in summary.get(name, {}):
      continue
    mean = summary[name]["satisfaction_sampled"]["mean"]
    if family not in out or mean > summary[out[family]]["satisfaction_sampled"]["mean"]:
      out[family] = name
  return out


def analyse(study, methods: list[dict], results: list[dict], budgets: dict,
            initial: dict) -> dict:
  """The study's findings, per budget, as plain data.

  Args:
    study: the study config (or its JSON): its `rules` (`hold_margin`, `stress_points`).
    methods: the methods (`runner.method_list`).
    results: every run's result (`{"method", "seed", "metrics", "diagnostics"?}`).
    budgets: `{budget name: d}`, in the study's order.
    initial: `{"student": metrics, ...}`: the initial student's, read at every budget.

  Returns `{"seeds": [...], "budgets": {name: {"d", "per_seed", "decision", "summary",
  "paired", "below", "most_satisfied"}}}`: `per_seed` as `per_budget`, `decision` as
  `protocol.decide`, `summary` `{method: {metric: interval}}` over seeds for every numeric
  metric, `paired` and `below` as `paired_against`, `most_satisfied` as that function.
  """
  rules = study["rules"]
  out = {}
  for b, d in budgets.items():
    per_seed = per_budget(methods, results, b)
    summary = plain(stats.summarize(per_seed, _numeric(per_seed)))
    paired, below = paired_against(per_seed)
    out[b] = dict(
        d=d, per_seed=plain(per_seed),
        decision=plain(protocol.decide(per_seed, methods, initial["student"], b,
                                       hold_margin=rules["hold_margin"],
                                       stress_points=rules["stress_points"])),
        summary=summary, paired=paired, below=below,
        most_satisfied=most_satisfied(methods, summary, b))
  return dict(seeds=sorted({r["seed"] for r in results}), budgets=out)


def interval(value: Mapping) -> Interval:
  """An interval of the analysis (a dict, None for NaN) as an `Interval`."""
  return Interval(**{k: math.nan if v is None else v for k, v in value.items()})


def intervals(table: Mapping) -> dict:
  """`{method: {metric: Interval}}` from the analysis' `summary` or `paired`."""
  return {name: {k: interval(v) for k, v in row.items()} for name, row in table.items()}
