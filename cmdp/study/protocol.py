"""A pre-registered comparison of constrained methods: equal knob grids in budget units, the
budgets it is run at, and the decision rules, all fixed in the study's config before a run.

The constraint is read as `P(C(y) <= d) >= 1 - delta` on the deployed student's samples at
the training temperature, so a method's satisfaction is the share of sampled responses
within `d`. Every constrained family gets the same grid of knobs in budget units (`g`);
`FAMILIES` says how each family reads it:

* `cmdp` per penalty form (`cmdp_terminal`: the terminal penalty without the boundary term,
  `boundary_width = 0`, the control for the term), and `cmdp_hinge`: `penalty_scale = g`
  (`penalty_units = "budget"`, the default);
* `soft_lagrangian`: `lambda d = g`, i.e. `soft_lambda = g / d` (`per_budget`);
* `dual_lagrangian`: no knob; the rate target `P(C > d) <= violation_target`, the initial
  violation rate `1 - q` at the budget's quantile `q`;

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

# The method families, one row each; `methods` builds the grid from them (a new family is a
# new row). A row:
#   objective: the registered objective its methods train;
#   loss: the loss fields every method of the family sets;
#   knob: the loss field the grid's value g sets (None: one method per budget, no knob);
#   units: the knob's units: "budget" (the field is g, read by the objective in budget
#     units) or "per_d" (the field is g / d: g is given as lambda d, `per_budget`);
#   rate_field: a loss field set to the budget's initial violation rate 1 - q (or None);
#   role: "cmdp" (a contender the *beats* rule judges), "lagrangian" (its rivals) or
#     "anchor" (no budget: trained once per seed, read at every budget).
FAMILIES = {
    "cmdp_terminal": dict(objective="cmdp", loss=dict(penalty="terminal", boundary_width=0.0),
                          knob="penalty_scale", units="budget", rate_field=None, role="cmdp"),
    "cmdp": dict(objective="cmdp", loss=dict(penalty="terminal"), knob="penalty_scale",
                 units="budget", rate_field=None, role="cmdp"),
    "cmdp_scaled": dict(objective="cmdp", loss=dict(penalty="scaled"), knob="penalty_scale",
                        units="budget", rate_field=None, role="cmdp"),
    "cmdp_hinge": dict(objective="cmdp_hinge", loss={}, knob="penalty_scale", units="budget",
                       rate_field=None, role="cmdp"),
    "soft_lagrangian": dict(objective="soft_lagrangian", loss={}, knob="soft_lambda",
                            units="per_d", rate_field=None, role="lagrangian"),
    "dual_lagrangian": dict(objective="dual_lagrangian", loss=dict(dual_target="rate"),
                            knob=None, units=None, rate_field="violation_target",
                            role="lagrangian"),
    "grpo": dict(objective="grpo", loss={}, knob=None, units=None, rate_field=None,
                 role="anchor"),
    "gkd": dict(objective="gkd", loss={}, knob=None, units=None, rate_field=None,
                role="anchor"),
}


# Protocol version 2 (issue 31: the boundary term, a stressed budget): cmdp without its
# boundary term and with it (the shipped default), the hinge and the two Lagrangians, one
# grid for all; the anchors. `cmdp_scaled` is left out.
V2_FAMILIES = ("cmdp_terminal", "cmdp", "cmdp_hinge", "soft_lagrangian", "dual_lagrangian",
               "grpo", "gkd")


def of_role(role: str) -> tuple[str, ...]:
  """The families of `FAMILIES` with `role`, in the table's order."""
  return tuple(f for f, row in FAMILIES.items() if row["role"] == role)


def budget_name(quantile: float) -> str:
  """`q50` for the 0.5 quantile."""
  return f"q{round(100 * quantile):d}"


def _method(family: str, row: dict, g: float | None, budget: str | None) -> dict:
  """One method of `family` (its `FAMILIES` row) at knob `g` and `budget`."""
  knob = {} if g is None else {row["knob"]: float(g)}
  name = family + ("" if g is None else f"@{g:g}") + ("" if budget is None else f"/{budget}")
  per_d = row["units"] == "per_d"
  return dict(name=name, objective=row["objective"], family=family,
              loss=dict(row["loss"], **({} if per_d else knob)),
              per_budget=knob if per_d else {}, budget=budget)


def methods(grid, quantiles, families=None) -> list[dict]:
  """The methods of a comparison: every constrained family at every knob `g` of `grid` (in
  budget units; one method for a family without a knob) and at every budget quantile, then
  the anchors once; `families` names the rows of `FAMILIES` to use (default: all), in the
  table's order.

  A method is `{name, objective, family, loss, per_budget, budget}`: `loss` fields set as
  given, `per_budget` fields set to value / d, `budget` the quantile's name (None for the
  anchors, which do not read d).
  """
  rows = [(f, row) for f, row in FAMILIES.items() if families is None or f in families]
  out = []
  for q in quantiles:
    for family, row in rows:
      if row["role"] != "anchor":
        knobs = grid if row["knob"] else (None,)
        out += [_method(family, row, g, budget_name(q)) for g in knobs]
  return out + [_method(f, row, None, None) for f, row in rows if row["role"] == "anchor"]


def rate_fields(method: dict, quantile: float) -> dict:
  """The loss fields `method` sets from its budget's quantile `q`: its family's `rate_field`
  at the initial violation rate `1 - q` (the dual then holds the initial satisfaction)."""
  row = FAMILIES.get(method.get("family"))
  if row is None or row["rate_field"] is None:
    return {}
  return {row["rate_field"]: round(1.0 - quantile, 6)}


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
  rivals = [best.get(f) for f in of_role("lagrangian") if best.get(f)]
  for family in [f for f in families if f in of_role("cmdp")]:
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


def require_choice(study) -> None:
  """Refuses a comparison whose config declares a pilot (`study.pilot`) before the pilot's
  choice is recorded (`study.pilot.choice`): the lower budget and the run settings are the
  pilot's to set (`python -m cmdp.study --pilot`); a config without a pilot passes."""
  pilot = study.get("pilot")
  if pilot is not None and not pilot.get("choice"):
    raise ValueError(
        f"config.pilot.choice is missing: the {study.name} comparison runs at the lower budget "
        "quantile, learning rate and steps its grpo-only pilot chooses; run python -m "
        "cmdp.study --config CONFIG --workdir DIR --pilot (a workdir of its own) and record its "
        "choice in the config first.")


def apply_choice(c, median: float, grid) -> None:
  """A version-2 study config (`V2_FAMILIES`) set from its pilot's recorded choice
  (`c.pilot.choice`: `quantile`, `learning_rate`, `num_steps`): the budgets (the `median`
  and the chosen lower quantile), the run's learning rate and steps, and the methods on
  `grid`. Without a choice: the median alone, and `require_choice` refuses the comparison."""
  choice = c.pilot.choice
  c.budget_quantiles = (median,) + ((choice.quantile,) if choice else ())
  if choice:
    c.run.optimizer.learning_rate = choice.learning_rate
    c.run.num_steps = choice.num_steps
  c.methods = methods(grid, c.budget_quantiles, V2_FAMILIES)
