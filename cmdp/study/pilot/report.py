"""The pilot's report, rendered from its analysis (`cmdp.study.pilot.analysis`): the markdown
(the declaration, per setting grpo's change in sampled satisfaction at each candidate budget,
the choice by the rule and the line to record in the config) and a JSON of the runs and the
analysis. `markdown` is a pure function; `write` writes both files."""
from __future__ import annotations

import os
from typing import Mapping

from cmdp.study import protocol
from cmdp.study.analysis import interval
from cmdp.study.report import fmt_interval, write_json


def points(value: float, sign: str = "") -> str:
  """A fraction in points, one decimal, zero unsigned (`-0.0` is `0.0`)."""
  text = f"{100 * value:{sign}.1f}"
  return "0.0" if float(text) == 0 else text


def cell(change: Mapping) -> str:
  """`-9.3 ± 2.1 (-8.0, -10.1, -9.8)`: the seed mean ± 95% t-interval and the per-seed
  values, in points."""
  seeds = ", ".join(points(v, "+") for v in change["per_seed"])
  return f"{fmt_interval(interval(change['interval']), 100.0)} ({seeds})"


def choice_text(pilot: Mapping, choice: Mapping | None, budgets: Mapping,
                missing: list) -> str:
  """The choice by the declared rule in words, and the `CHOICE` line for the config."""
  if choice is None:
    return (f"**No choice yet:** {len(missing)} runs are not finished ({', '.join(missing)}); "
            "rerun the pilot to finish them.")
  where = ("at one of the lower candidates" if choice["target"] == "lower" else
           f"at {choice['target']}")
  falls = ", ".join(f"{b} {points(v)}" for b, v in choice["lower_losses"].items())
  head = (f"**Choice by the declared rule:** learning rate {choice['learning_rate']:g}, "
          f"{choice['num_steps']} steps, lower budget {choice['budget']} (d = "
          f"{budgets[choice['budget']]:.4g}). grpo's seed-mean sampled satisfaction falls "
          f"{100 * choice['stress']:.1f} points {where} at that setting (target "
          f"{100 * pilot['stress_points']:.0f}): ")
  head += ("the stress target is met." if choice["met"] else
           "**the stress target was not met** by any setting; the rule takes the last one.")
  record = (f"CHOICE = dict(quantile={choice['quantile']}, "
            f"learning_rate={choice['learning_rate']!r}, num_steps={choice['num_steps']})")
  return (f"{head} Its seed-mean falls at the lower candidates (points): {falls}; the "
          f"largest, ties to the higher quantile, gives the lower budget.\n\nTo record in the "
          f"config:\n\n```python\n{record}\n```")


def markdown(study, pilot: Mapping, found: Mapping, budgets: Mapping, initial: Mapping,
             command: str, run_min: float) -> str:
  """The report's text: the study's title, its protocol (the pilot's declaration is in it),
  the runs, the initial student at each candidate budget, the table of changes and the
  choice; `found` is `analysis.analyse`'s result."""
  names = [protocol.budget_name(q) for q in pilot["quantiles"]]
  lines = ["| setting (grpo) | seeds | " + " | ".join(
               f"{b} (d = {budgets[b]:.4g})" for b in names) + " |",
           "|---" * (len(names) + 2) + "|"]
  for row in found["settings"]:
    lines.append(f"| lr {row['learning_rate']:g}, {row['num_steps']} steps | "
                 f"{len(row['seeds'])} | " + " | ".join(cell(row["change"][b]) for b in names)
                 + " |")
  start = ", ".join(f"{b}: {100 * initial[f'satisfaction_sampled@{b}']:.1f}%" for b in names)
  return "\n".join([
      f"# Pilot (grpo only) of: {study.title}", "", "## Protocol (declared before the runs)",
      "", study.protocol, "", f"Command: `{command}`. Seeds {list(pilot['seeds'])}; "
      f"{sum(len(r['seeds']) for r in found['settings'])} runs ({run_min:.0f} min of "
      "training and evaluation, summed over the runs, which may span invocations).", "",
      f"Initial student's sampled satisfaction: {start}.", "",
      "## grpo's change in sampled satisfaction from the initial student", "",
      "Points: the seed mean ± 95% t-interval over seeds, and (in parentheses) each seed's.", "",
      "\n".join(lines), "", choice_text(pilot, found["choice"], budgets, found["missing"]),
      ""])


def write(study, out_dir: str, pilot: Mapping, found: Mapping, results: list,
          budgets: Mapping, initial: Mapping, command: str, wall_s: float) -> dict:
  """`<name>_pilot.md` and `<name>_pilot.json` in `out_dir`; returns the JSON payload."""
  os.makedirs(out_dir, exist_ok=True)
  run_min = sum(r["wall_s"] for r in results) / 60
  base = os.path.join(out_dir, f"{study.name}_pilot")
  with open(base + ".md", "w") as f:
    f.write(markdown(study, pilot, found, budgets, initial, command, run_min))
  payload = dict(pilot=dict(pilot), budgets=dict(budgets), initial=dict(initial), runs=results,
                 analysis=found, command=command, wall_time_s=wall_s)
  write_json(base + ".json", payload)
  return payload
