"""The study's written outputs, rendered from its analysis (`cmdp.study.analysis`): the
markdown report (per budget, tables of seed intervals, the verdict and the exploratory paired
differences from grpo), its figure (`cmdp.study.plot`) and a JSON file of the raw per-seed
numbers with the decisions.

The text is a pure function of the analysis and the study's inputs (`markdown`), tested on
hand-made inputs; `write` writes the three files.
"""
from __future__ import annotations

import json
import math
import os
from typing import Mapping, Sequence

from cmdp.evaluation.stats import Interval
from cmdp.study import analysis

# (metric key, column title, scale): the results table (columns no run has are left out)
COLUMNS = (("accuracy_greedy", "accuracy greedy %", 100.0),
           ("accuracy_sampled", "accuracy sampled %", 100.0),
           ("satisfaction_sampled", "satisfaction sampled %", 100.0),
           ("satisfaction_greedy", "satisfaction greedy %", 100.0),
           ("kl_seq_sampled_q50", "KL sampled q50", 1.0),
           ("kl_seq_sampled_q90", "KL sampled q90", 1.0),
           ("accuracy_greedy_mul", "accuracy with x %", 100.0),
           ("accuracy_greedy_nomul", "accuracy without x %", 100.0))
# Per-step training diagnostics, averaged over a run's steps (docs/metrics.md).
DIAGNOSTICS = (("train/groups_mixed", "mixed groups", 100.0),
               ("train/groups_violating", "violating groups", 100.0),
               ("train/groups_tied", "tied groups", 100.0),
               ("train/penalty", "penalty (reward units)", 1.0),
               ("train/task_reward", "task reward", 1.0),
               ("train/entropy_gap", "entropy gap (nats/token)", 1.0),
               ("train/cost_before_flag", "cost before flag", 100.0),
               ("train/kl_seq_q50", "batch KL q50", 1.0),
               ("train/update_ratio", "update / (lr sqrt P)", 1.0),
               ("train/generation_batches", "generation batches / step", 1.0),
               ("train/skipped", "updates skipped", 100.0),
               ("train/lambda", "lambda", 1.0))


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


PAIRED_COLUMNS = tuple((k, f"{k.replace('_', ' ')}, minus {analysis.REFERENCE} (points)", 100.0)
                       for k in analysis.PAIRED)


def paired_table(paired: Mapping, below: Mapping) -> str:
  """The analysis' paired differences from grpo (`analysis.paired_against`) as a table, each
  row labelled with the seeds in which the setting's sampled satisfaction fell below grpo's."""
  ref = analysis.REFERENCE
  labelled = {f"{m} (below {ref} in {below[m]['below']} of {below[m]['seeds']} seeds)": ivs
              for m, ivs in analysis.intervals(paired).items()}
  return results_table(labelled, PAIRED_COLUMNS)


def write_json(path: str, payload: Mapping) -> None:
  with open(path, "w") as f:
    json.dump(analysis.plain(payload), f, indent=2)


def grpo_change(decision: dict) -> str:
  """`grpo loses 19.0 points` or, where its satisfaction rose, `grpo gains 2.9 points`.

  One decimal, or two where one would round a loss across the declared threshold
  (`stress_points`): 4.98 points is written `4.98`, not `5.0`, beside "not stressed".
  """
  loss = 100 * (math.nan if decision["grpo_loss"] is None else decision["grpo_loss"])
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


def budget_section(b: str, found: dict, initial: dict, columns: tuple = COLUMNS) -> str:
  """One budget's tables (results: `columns`, diagnostics), the verdict by the rules and,
  after it, the exploratory paired differences from grpo; `found` is the budget's analysis
  (`analysis.analyse`)."""
  s = initial["student"]
  summary, decision = analysis.intervals(found["summary"]), found["decision"]
  holds = decision["holds"]
  marked = {(f"{k} (holds)" if holds.get(k) else k): v for k, v in summary.items()}
  lines = [f"### Budget {b}: d = {found['d']:.4g} nats per sequence", "",
           f"Initial student: {100 * s['accuracy']:.1f}% greedy, "
           f"{100 * s[f'satisfaction_sampled@{b}']:.1f}% of sampled responses within d "
           f"({100 * s[f'satisfaction_greedy@{b}']:.1f}% greedy). Mean ± 95% t-interval "
           "over seeds.", "", results_table(marked, columns),
           "Training diagnostics (the mean over each run's steps, then over seeds):", "",
           results_table(summary, DIAGNOSTICS), reward_cost_table(summary),
           verdict_text(b, decision)]
  if analysis.REFERENCE in found["per_seed"]:  # the exploratory table needs grpo's runs
    lines += ["Exploratory, read by no declared rule (not part of the declared protocol): "
              "each setting's paired difference from grpo (which ignores the budget) over the "
              "same seeds, mean ± 95% t-interval.",
              "", paired_table(found["paired"], found["below"])]
  return "\n".join(lines)


def columns_of(results: Sequence[Mapping]) -> tuple:
  """`COLUMNS`, less the sub-type columns (with / without a multiplication) where no problem
  has one."""
  if any(r["metrics"].get("num_mul") for r in results):
    return COLUMNS
  return tuple(c for c in COLUMNS if not c[0].endswith("mul"))


def markdown(study, found: dict, results: Sequence[Mapping], budgets: Mapping, initial: dict,
             command: str, png: str) -> str:
  """The report's text: the study's title, description, protocol and notes, the command and
  runs, the teacher and initial student, the figure `png`, and each budget's section
  (`budget_section`) of the analysis `found` (`analysis.analyse`)."""
  t, s = initial["teacher"], initial["student"]
  run_min = sum(r["wall_s"] for r in results) / 60
  stage = initial.get("pretrain") or {}
  trained = "".join(
      f" The {role}: {info['num_params']:,} parameters, trained from scratch in "
      f"{info['wall_s'] / 60:.1f} min." for role, info in stage.items())
  columns = columns_of(results)
  sections = [budget_section(b, per, initial, columns) for b, per in found["budgets"].items()]
  return "\n".join([
      f"# {study.title}", "", study.description, "", "## Protocol (declared before the runs)",
      "", study.protocol, "", *([study.settings_note, ""] if study.get("settings_note") else []),
      f"Command: `{command}`. {len(results)} runs ({run_min:.0f} min of training and "
      f"evaluation, summed over the runs, which may span invocations), seeds {found['seeds']}.",
      "", f"Teacher: {100 * t['accuracy']:.1f}% greedy, {100 * t['accuracy_sampled']:.1f}% "
      f"sampled; initial student: {100 * s['accuracy']:.1f}% greedy, "
      f"{100 * s['accuracy_sampled']:.1f}% sampled, on {s['num_examples']} held-out problems. "
      "Budgets: " + ", ".join(f"{k}: d = {v:.4g}" for k, v in budgets.items()) + "."
      + trained, "", f"![accuracy against satisfaction]({png})", "", "## Results", "",
      *sections])


def write(study, out_dir: str, found: dict, methods: list, results: list, budgets: dict,
          initial: dict, command: str, wall_s: float) -> dict:
  """The report of the analysis `found` in `out_dir`: `<name>.md`, `<name>.png` and
  `<name>.json` (the runs, the decisions and the paired differences from grpo); returns the
  JSON payload."""
  from cmdp.study import plot as plot_lib  # pylint: disable=g-import-not-at-top
  os.makedirs(out_dir, exist_ok=True)
  png = os.path.join(out_dir, f"{study.name}.png")
  per = found["budgets"]
  plot_lib.fronts({b: analysis.intervals(x["summary"]) for b, x in per.items()}, methods,
                  initial["student"], png, study.rules.hold_margin)
  with open(os.path.join(out_dir, f"{study.name}.md"), "w") as f:
    f.write(markdown(study, found, results, budgets, initial, command, os.path.basename(png)))
  payload = dict(budgets=budgets, initial=initial, methods=methods, runs=results,
                 decisions={b: x["decision"] for b, x in per.items()},
                 paired_vs_grpo={b: x["paired"] for b, x in per.items()}, command=command,
                 wall_time_s=wall_s, config=json.loads(study.to_json_best_effort()))
  write_json(os.path.join(out_dir, f"{study.name}.json"), payload)
  return payload
