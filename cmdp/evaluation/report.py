"""The end-of-run report: each evaluated model's figures with 95% confidence intervals.

Proportions over problems (accuracy, satisfaction) get Wilson intervals; the mean sequence
KL gets a Student-t interval from its sample standard deviation. Greedy and sampled figures
are reported side by side where both exist.
"""
from __future__ import annotations

from cmdp.evaluation import stats

ORDER = ("teacher", "initial_student", "student")


def _proportion(r: dict, key: str, n_key: str) -> str:
  if key not in r or not r.get(n_key):
    return "-"
  n = int(r[n_key])
  ci = stats.wilson_interval(round(r[key] * n), n)
  return f"{100 * r[key]:.1f}% [{100 * ci.lo:.1f}, {100 * ci.hi:.1f}]"


def _mean(r: dict, kind: str) -> str:
  mean, sd, n = (r.get(f"kl_seq_{kind}_mean"), r.get(f"kl_seq_{kind}_std"),
                 int(r.get(f"num_{kind}", 0)))
  if mean is None:
    return "-"
  if sd is None or n < 2:
    return f"{mean:.2f}"
  return f"{mean:.2f} ± {stats.t_interval_from_moments(mean, sd, n).half:.2f}"


def table(results: dict) -> str:
  """A markdown table, one row per model (teacher, initial student, student first)."""
  names = [n for n in ORDER if n in results] + [n for n in results if n not in ORDER]
  lines = ["| model | accuracy greedy | accuracy sampled | satisfaction greedy | "
           "satisfaction sampled | KL greedy (nats/seq) | KL sampled |",
           "| --- | --- | --- | --- | --- | --- | --- |"]
  for name in names:
    r = results[name]
    lines.append(" | ".join([
        f"| {name.replace('_', ' ')}", _proportion(r, "accuracy", "num_greedy"),
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
