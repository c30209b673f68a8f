"""The end-of-run report: each evaluated model's figures with 95% confidence intervals.

Proportions (accuracy, satisfaction) get Wilson intervals and the mean sequence KL a
Student-t interval, both counting questions, not responses (eval.json's `_lo` / `_hi`, from
`stats.clustered_proportion` and `stats.clustered_mean`: `eval.pass_k` samples of one
question are not independent). Greedy and sampled figures are reported side by side where
both exist; `reward_cost_table` gives how the task reward and the cost go together.
"""
from __future__ import annotations

from cmdp.evaluation import stats

ORDER = ("teacher", "initial_student", "student")


def _proportion(r: dict, key: str, n_key: str) -> str:
  if key not in r or not r.get(n_key):
    return "-"
  lo, hi = r.get(f"{key}_lo"), r.get(f"{key}_hi")
  if lo is None or hi is None:  # an eval.json from before the question-counted intervals
    n = int(r[n_key])
    ci = stats.wilson_interval(round(r[key] * n), n)
    lo, hi = ci.lo, ci.hi
  return f"{100 * r[key]:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]"


def _mean(r: dict, kind: str) -> str:
  key = f"kl_seq_{kind}_mean"
  mean, sd, n = r.get(key), r.get(f"kl_seq_{kind}_std"), int(r.get(f"num_{kind}", 0))
  if mean is None:
    return "-"
  if r.get(f"{key}_lo") is not None and r.get(f"{key}_hi") is not None:
    return f"{mean:.2f} ± {(r[f'{key}_hi'] - r[f'{key}_lo']) / 2:.2f}"
  if f"{key}_lo" in r or sd is None or n < 2:  # too few questions for an interval
    return f"{mean:.2f}"
  return f"{mean:.2f} ± {stats.t_interval_from_moments(mean, sd, n).half:.2f}"


def _number(value, spec: str = ".2f") -> str:
  return "-" if value is None else format(value, spec)


def reward_cost_table(results: dict) -> str:
  """Per model that has the figures (the scored ones), for its greedy and sampled
  responses: corr(R, C) (Pearson, Spearman) and the quantiles q10 / q50 / q90 of the cost
  `C(y)` of right and of wrong answers. "" when no model has them."""
  names = [n for n in ORDER if n in results] + [n for n in results if n not in ORDER]
  lines = []
  for name in names:
    r = results[name]
    for kind in ("greedy", "sampled"):
      if f"corr_pearson_{kind}" not in r:
        continue
      cells = [_number(r[f"corr_pearson_{kind}"]), _number(r[f"corr_spearman_{kind}"])]
      for answer in ("right", "wrong"):
        cells.append(" / ".join(_number(r.get(f"sequence_cost_{kind}_{answer}_q{q}"), ".3g")
                                for q in (10, 50, 90)))
      lines.append(f"| {name.replace('_', ' ')} | {kind} | " + " | ".join(cells) + " |")
  if not lines:
    return ""
  return "\n".join(["| model | responses | corr(R, C) Pearson | Spearman | "
                    "C of right answers q10 / q50 / q90 | C of wrong answers q10 / q50 / q90 |",
                    "| --- | --- | --- | --- | --- | --- |", *lines]) + "\n"


def table(results: dict) -> str:
  """A markdown table, one row per model (teacher, initial student, student first)."""
  names = [n for n in ORDER if n in results] + [n for n in results if n not in ORDER]
  lines = ["| model | accuracy greedy | accuracy sampled | satisfaction greedy | "
           "satisfaction sampled | KL greedy (nats/seq) | KL sampled |",
           "| --- | --- | --- | --- | --- | --- | --- |"]
  for name in names:
    r = results[name]
    lines.append(" | ".join([
        f"| {name.replace('_', ' ')}",
        _proportion(r, "accuracy_greedy" if "accuracy_greedy" in r else "accuracy",
                    "num_greedy"),
        _proportion(r, "accuracy_sampled", "num_sampled"),
        _proportion(r, "satisfaction_greedy", "num_greedy"),
        _proportion(r, "satisfaction_sampled", "num_sampled"),
        _mean(r, "greedy"), _mean(r, "sampled")]) + " |")
  return "\n".join(lines) + "\n"


def constraint_verdict(results: dict, margin: float = 0.02) -> str:
  """One sentence: the trained student's sampled satisfaction at the end against the
  initial student's, and whether it holds the budget by the study's rule (no more than
  `margin` below the start; `cmdp.study.protocol`). "" without both models' figures."""
  start, end = results.get("initial_student", {}), results.get("student", {})
  key = "satisfaction_sampled"
  if key not in start or key not in end:
    return ""
  a, b = start[key], end[key]
  held = b >= a - margin - 1e-9
  return (f"Budget: {100 * b:.1f}% of the trained student's sampled responses are within d, "
          f"against {100 * a:.1f}% at the start: the constraint is "
          + ("held" if held else "not held")
          + f" (held: at most {100 * margin:g} points below the start).\n")
