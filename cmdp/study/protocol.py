"""A pre-registered comparison of constrained methods: equal knob grids in budget units, the
budgets it is run at, and the decision rules, all fixed in the study's config before a run.

The constraint is read as `P(C(y) <= d) >= 1 - delta` on the deployed student's samples at
the training temperature, so a method's satisfaction is the share of sampled responses
within `d`. Every constrained family gets the same grid of knobs in budget units (`g`):

* `cmdp` per penalty form: `penalty_scale = g` (`penalty_units = "budget"`);
* `cmdp_hinge`: `penalty_scale = g`;
* `soft_lagrangian`: `lambda d = g`, i.e. `soft_lambda = g / d` (`per_budget`);
* `dual_lagrangian`: the rate target, `P(C > d) <= violation_target`;

and the anchors (`grpo`, `gkd`) do not read `d`: they are trained once per seed and
measured at every budget.

Decision rules (`decide`), per budget:

* *holds*: a setting's final sampled satisfaction is at least the initial student's minus
  `hold_margin`, in every seed;
* *informative*: `grpo` loses at least `stress_points` of satisfaction (seed mean) at that
  `d`; if not, the budget was not stressed and nothing is concluded from it;
* *beats*: the best holding setting of a cmdp family (highest seed-mean greedy accuracy) is
  more accurate than the best holding `soft_lagrangian` or `dual_lagrangian` setting with a
  positive paired difference in every seed, or it holds where none of them does.
"""
from __future__ import annotations

import numpy as np

# Families of constrained methods and the objective and penalty that define them.
CMDP_FORMS = {"cmdp": dict(penalty="terminal"), "cmdp_scaled": dict(penalty="scaled")}
LAGRANGIAN_FAMILIES = ("soft_lagrangian", "dual_lagrangian")


def settled_rerun_note(first_commit: str, name: str) -> str:
  """The report's line on the `cmdp` runs made again after the estimator change of
  2026-12-06 (docs/method.md, settled tokens), written before they ran."""
  return (f"The `cmdp` runs (terminal penalty) were made again on 2026-12-06, after its "
          f"estimator gave no advantage to the tokens whose state fixes their return to go "
          f"(docs/method.md, settled tokens: unbiased, lower variance). That change was made "
          f"after reading the first runs' results; no protocol, grid, rule or setting was "
          f"changed, and no other method's estimator changed, so their runs stand. The "
          f"first runs' report: `git show {first_commit}:docs/results/{name}.md`. The "
          f"exploratory tables against grpo were added after the results were read.")


def signal_note(commit: str) -> str:
  """The report's line on the runs made after dynamic sampling, the no-op step and cmdp's
  boundary term landed (written before any such run)."""
  return (f"From commit {commit} on, runs of this config sample dynamically (a step trains "
          f"only on prompt groups that carry a gradient; generation batches per step in the "
          f"diagnostics), an update without gradient leaves the student unchanged, and "
          f"`cmdp` carries its boundary term (boundary_width 0.1; docs/method.md): reports "
          f"made before are dated records of the earlier code, not comparable run for run.")


def budget_name(quantile: float) -> str:
  """`q50` for the 0.5 quantile."""
  return f"q{round(100 * quantile):d}"


def methods(grid, quantiles, *, cmdp_forms=tuple(CMDP_FORMS), hinge: bool = True,
            soft: bool = True, dual: bool = True, anchors=("grpo", "gkd")) -> list[dict]:
  """The methods of a comparison: every constrained family at every knob `g` of `grid` (in
  budget units) and at every budget quantile, and the anchors once.

  A method is `{name, objective, family, loss, per_budget, budget}`: `loss` fields set as
  given, `per_budget` fields set to value / d, `budget` the quantile's name (None for the
  anchors, which do not read d).
  """
  out = []
  for q in quantiles:
    b = budget_name(q)
    for form in cmdp_forms:
      out += [dict(name=f"{form}@{g:g}/{b}", objective="cmdp", family=form,
                   loss=dict(CMDP_FORMS[form], penalty_scale=float(g)), per_budget={},
                   budget=b) for g in grid]
    if hinge:
      out += [dict(name=f"cmdp_hinge@{g:g}/{b}", objective="cmdp_hinge", family="cmdp_hinge",
                   loss=dict(penalty_scale=float(g)), per_budget={}, budget=b) for g in grid]
    if soft:
      out += [dict(name=f"soft_lagrangian@{g:g}/{b}", objective="soft_lagrangian",
                   family="soft_lagrangian", loss={}, per_budget=dict(soft_lambda=float(g)),
                   budget=b) for g in grid]
    if dual:
      out.append(dict(name=f"dual_lagrangian/{b}", objective="dual_lagrangian",
                      family="dual_lagrangian", loss=dict(dual_target="rate"), per_budget={},
                      budget=b))
  out += [dict(name=a, objective=a, family=a, loss={}, per_budget={}, budget=None)
          for a in anchors]
  return out


def _seeds(per_seed: dict, name: str, key: str) -> np.ndarray:
  """`[seeds]` values of `key` for method `name`, in seed order."""
  runs = per_seed.get(name, {})
  return np.asarray([runs[s][key] for s in sorted(runs)], np.float64)


def decide(per_seed: dict, methods_: list[dict], initial: dict, budget: str, *,
           hold_margin: float, stress_points: float, accuracy: str = "accuracy_greedy",
           satisfaction: str = "satisfaction_sampled") -> dict:
  """The decision rules at one budget (module docstring).

  Args:
    per_seed: `{method name: {seed: metrics}}`; a method's metrics at this budget are read
      as `<key>@<budget>` when present (the anchors), else `<key>`.
    methods_: the comparison's methods (`methods`).
    initial: the initial student's metrics, with `<satisfaction>@<budget>`.
    budget: the budget's name (`q50`).
    hold_margin: satisfaction the final student may lose and still hold (0.02 = 2 points).
    stress_points: satisfaction grpo must lose for the budget to be informative.

  Returns `{"holds": {name: bool}, "informative": bool, "grpo_loss": float, "stress_points":
  float, "families":
  {family: {"best": name or None, ...}}, "beats": {cmdp family: verdict dict}}`.
  """
  start = float(initial[f"{satisfaction}@{budget}"])
  here = [m for m in methods_ if m["budget"] == budget and m["name"] in per_seed]

  def values(m, key):
    name = m["name"]
    tagged = f"{key}@{budget}"
    runs = per_seed[name]
    key = tagged if tagged in runs[sorted(runs)[0]] else key
    return _seeds(per_seed, name, key)

  tol = 1e-9  # the rules' edges are met exactly at the edge (0.48 holds 0.50 - 2 points)
  holds = {m["name"]: bool(np.all(values(m, satisfaction) >= start - hold_margin - tol))
           for m in here}
  grpo = [m for m in methods_ if m["name"] == "grpo" and "grpo" in per_seed]
  grpo_loss = float(start - values(grpo[0], satisfaction).mean()) if grpo else float("nan")
  families = {}
  for m in here:
    families.setdefault(m["family"], []).append(m)
  best = {}
  for family, ms in families.items():
    held = [m for m in ms if holds[m["name"]]]
    best[family] = (max(held, key=lambda m: values(m, accuracy).mean())["name"] if held
                    else None)
  by_name = {m["name"]: m for m in here}
  beats = {}
  rivals = [best.get(f) for f in LAGRANGIAN_FAMILIES if best.get(f)]
  for family in [f for f in families if f.startswith("cmdp")]:
    mine = best[family]
    verdict = dict(best=mine, rivals=rivals)
    if mine is None:
      verdict.update(beats=False, reason="no setting holds the budget")
    elif not rivals:
      verdict.update(beats=True, reason="it holds the budget where no Lagrangian setting does")
    else:
      diffs = {r: values(by_name[mine], accuracy) - values(by_name[r], accuracy) for r in rivals}
      verdict["paired"] = {r: d.tolist() for r, d in diffs.items()}
      top = max(rivals, key=lambda r: values(by_name[r], accuracy).mean())
      wins = bool(np.all(diffs[top] > 0))
      verdict.update(beats=wins, reason=(
          f"more accurate than {top} in every seed" if wins else
          f"not more accurate than {top} in every seed"))
    beats[family] = verdict
  return dict(holds=holds, informative=bool(grpo_loss >= stress_points - tol),
              grpo_loss=grpo_loss, stress_points=stress_points,
              initial_satisfaction=start, best=best, beats=beats)


def at_budget(metrics: dict, budget: str) -> dict:
  """A run's metrics read at one budget: `satisfaction_<kind>@<budget>` as
  `satisfaction_<kind>`."""
  out = dict(metrics)
  for kind in ("greedy", "sampled"):
    key = f"satisfaction_{kind}@{budget}"
    if key in metrics:
      out[f"satisfaction_{kind}"] = metrics[key]
  return out
