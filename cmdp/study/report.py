"""The study's written outputs: markdown tables of seed intervals and a JSON file of raw
per-seed numbers (the report's text is `cmdp.study.compare`'s).

Pure functions of the aggregated numbers (`cmdp.study.stats`), tested on hand-made inputs.
"""
from __future__ import annotations

import json
import math
from typing import Mapping, Sequence

from cmdp.evaluation.stats import Interval
from cmdp.study import stats


def fmt_interval(iv: Interval | None, scale: float = 1.0, digits: int = 1) -> str:
  """`mean ± half` (scaled), `mean` alone for one seed, `–` when missing."""
  if iv is None or math.isnan(iv.mean):
    return "–"
  if iv.n < 2 or math.isnan(iv.half):
    return f"{iv.mean * scale:.{digits}f}"
  return f"{iv.mean * scale:.{digits}f} ± {iv.half * scale:.{digits}f}"


def results_table(summary: Mapping[str, Mapping[str, Interval]],
                  columns: Sequence[tuple]) -> str:
  """One row per method: each cell `mean ± 95% half-width` over seeds; `columns` are
  `(metric key, title, display scale)`, those no method has left out."""
  used = [c for c in columns if any(c[0] in s for s in summary.values())]
  lines = ["| method | seeds | " + " | ".join(c[1] for c in used) + " |",
           "|---" * (len(used) + 2) + "|"]
  for method, s in summary.items():
    n = max((iv.n for iv in s.values()), default=0)
    cells = [fmt_interval(s.get(key), scale, 3 if key == "lambda" else
                          2 if scale == 1.0 else 1) for key, _, scale in used]
    lines.append(f"| {method} | {n} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


# How task reward and cost go together in each run's sampled evaluation responses
# (eval.json's keys, docs/metrics.md): corr(R, C) and the cost quantiles of right and wrong
# answers.
REWARD_COST_COLUMNS = (
    ("corr_pearson_sampled", "corr(R, C)", 1.0),
    ("corr_spearman_sampled", "Spearman", 1.0),
    *((f"sequence_cost_sampled_{a}_q{q}", f"C {a} q{q}", 1.0)
      for a in ("right", "wrong") for q in (10, 50, 90)))


def reward_cost_table(summary: Mapping[str, Mapping[str, Interval]]) -> str:
  """The `REWARD_COST_COLUMNS` of each method (mean ± 95% t-interval over seeds) under a
  line that says what they are; "" when no method has them (results from before them)."""
  if not any(k in s for s in summary.values() for k, _, _ in REWARD_COST_COLUMNS):
    return ""
  return ("Task reward R and cost C(y) of the sampled evaluation responses: their correlation "
          "(Pearson, Spearman) and the quantiles of C of right and of wrong answers, mean over "
          "seeds:\n\n" + results_table(summary, REWARD_COST_COLUMNS))


PAIRED_COLUMNS = (("satisfaction_sampled", "satisfaction sampled, minus grpo (points)", 100.0),
                  ("accuracy_greedy", "accuracy greedy, minus grpo (points)", 100.0))


def paired_against(per_seed: Mapping[str, Mapping[int, Mapping[str, float]]],
                   reference: str = "grpo") -> tuple[dict, str]:
  """Each method's paired difference from `reference` over their shared seeds
  (`stats.paired_differences` on `PAIRED_COLUMNS`), and its table, each row labelled with
  the seeds in which its sampled satisfaction fell below the reference's. Exploratory: no
  declared rule reads it. `({}, "")` without the reference."""
  if reference not in per_seed:
    return {}, ""
  paired = stats.paired_differences(per_seed, reference, [k for k, _, _ in PAIRED_COLUMNS])
  ref, key = per_seed[reference], PAIRED_COLUMNS[0][0]
  labelled = {}
  for method, ivs in paired.items():
    shared = sorted(set(per_seed[method]) & set(ref))
    below = sum(per_seed[method][s][key] < ref[s][key] for s in shared)
    labelled[f"{method} (below {reference} in {below} of {len(shared)} seeds)"] = ivs
  return paired, results_table(labelled, PAIRED_COLUMNS)


def to_jsonable(obj):
  """Intervals as dicts, NaN as None: a structure `json.dump` writes."""
  if isinstance(obj, Interval):
    return {k: to_jsonable(v) for k, v in obj._asdict().items()}
  if isinstance(obj, Mapping):
    return {str(k): to_jsonable(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [to_jsonable(v) for v in obj]
  if isinstance(obj, float) and math.isnan(obj):
    return None
  return obj


def write_json(path: str, payload: Mapping) -> None:
  with open(path, "w") as f:
    json.dump(to_jsonable(payload), f, indent=2)


def grpo_change(decision: dict) -> str:
  """`grpo loses 19.0 points` or, where its satisfaction rose, `grpo gains 2.9 points`.

  One decimal, or two where one would round a loss across the declared threshold
  (`stress_points`): 4.98 points is written `4.98`, not `5.0`, beside "not stressed".
  """
  loss = 100 * decision["grpo_loss"]
  threshold = 100 * decision.get("stress_points", float("nan"))
  digits = 2 if (round(loss, 1) >= threshold) != decision["informative"] else 1
  return f"grpo {'loses' if loss >= 0 else 'gains'} {abs(loss):.{digits}f} points"


def verdict_text(b: str, decision: dict) -> str:
  """The rules applied at one budget, in words."""
  start = 100 * decision["initial_satisfaction"]
  out = [f"**Verdict at {b}.** {grpo_change(decision)} of sampled "
         f"satisfaction (from {start:.1f}%): the budget is "
         + ("stressed (informative)." if decision["informative"] else
            "not stressed (grpo's loss is under the declared threshold): nothing is concluded "
            "from this budget.")]
  held = sorted(k for k, v in decision["holds"].items() if v)
  out.append("Settings that hold it in every seed: " + (", ".join(held) if held else "none")
             + ".")
  for family, v in decision["beats"].items():
    mine = v["best"] or "no setting"
    out.append(f"`{family}` (best holding: {mine}): "
               + ("beats" if v["beats"] else "does not beat")
               + f" the Lagrangians: {v['reason']}"
               + ("" if decision["informative"] else " (not informative)") + ".")
  return "\n\n".join(out) + "\n"
