"""The study's written outputs: a markdown report and a JSON file of raw per-seed numbers.

Pure functions of the aggregated numbers (`cmdp.study.stats`), so the text is tested on
hand-made inputs.
"""
from __future__ import annotations

import json
import math
from typing import Mapping, Sequence

from cmdp.evaluation.stats import Interval

# (metric key, column title, scale for display: 100 = percent)
TABLE_COLUMNS = (
    ("accuracy_greedy", "accuracy greedy %", 100.0),
    ("accuracy_sampled", "accuracy sampled %", 100.0),
    ("satisfaction_greedy", "satisfaction@d greedy %", 100.0),
    ("satisfaction_sampled", "satisfaction@d sampled %", 100.0),
    ("kl_seq_greedy_mean", "KL greedy mean", 1.0),
    ("kl_seq_greedy_q10", "KL greedy q10", 1.0),
    ("kl_seq_greedy_q50", "KL greedy q50", 1.0),
    ("kl_seq_greedy_q90", "KL greedy q90", 1.0),
    ("kl_seq_sampled_mean", "KL sampled mean", 1.0),
    ("kl_seq_sampled_q10", "KL sampled q10", 1.0),
    ("kl_seq_sampled_q50", "KL sampled q50", 1.0),
    ("kl_seq_sampled_q90", "KL sampled q90", 1.0),
    ("accuracy_greedy_mul", "acc. with x %", 100.0),
    ("accuracy_greedy_nomul", "acc. without x %", 100.0),
    ("lambda", "lambda", 1.0),
)
COMPARISON_COLUMNS = ("accuracy_greedy", "accuracy_sampled", "satisfaction_greedy",
                      "satisfaction_sampled", "kl_seq_greedy_mean", "kl_seq_sampled_mean")


def fmt_interval(iv: Interval | None, scale: float = 1.0, digits: int = 1) -> str:
  """`mean ± half` (scaled), `mean` alone for one seed, `–` when missing."""
  if iv is None or math.isnan(iv.mean):
    return "–"
  if iv.n < 2 or math.isnan(iv.half):
    return f"{iv.mean * scale:.{digits}f}"
  return f"{iv.mean * scale:.{digits}f} ± {iv.half * scale:.{digits}f}"


def results_table(summary: Mapping[str, Mapping[str, Interval]],
                  columns: Sequence[tuple] = TABLE_COLUMNS) -> str:
  """One row per method: each cell `mean ± 95% half-width` over seeds."""
  used = [c for c in columns if any(c[0] in s for s in summary.values())]
  lines = ["| method | seeds | " + " | ".join(c[1] for c in used) + " |",
           "|---" * (len(used) + 2) + "|"]
  for method, s in summary.items():
    n = max((iv.n for iv in s.values()), default=0)
    cells = [fmt_interval(s.get(key), scale, 3 if key == "lambda" else
                          2 if scale == 1.0 else 1) for key, _, scale in used]
    lines.append(f"| {method} | {n} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def comparison_table(diffs: Mapping[str, Mapping[str, Interval]], reference: str,
                     columns: Sequence[str] = COMPARISON_COLUMNS) -> str:
  """Per baseline: the paired difference (baseline - reference) with its 95% CI."""
  titles = {key: title for key, title, _ in TABLE_COLUMNS}
  lines = ["| method - " + reference + " | " + " | ".join(titles[c] for c in columns) + " |",
           "|---" * (len(columns) + 1) + "|"]
  for method, d in diffs.items():
    cells = []
    for c in columns:
      iv = d.get(c)
      scale = 100.0 if c.startswith(("accuracy", "satisfaction")) else 1.0
      if iv is None or iv.n < 2:
        cells.append(fmt_interval(iv, scale))
      else:
        mark = " *" if iv.excludes_zero() else ""
        cells.append(f"{iv.mean * scale:+.1f} [{iv.lo * scale:+.1f}, {iv.hi * scale:+.1f}]{mark}")
    lines.append(f"| {method} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def _direction(iv: Interval | None) -> str:
  """"higher", "lower" or "no clear difference" (95% CI of a paired difference vs 0)."""
  if iv is None or iv.n < 2:
    return "not measurable (fewer than 2 paired seeds)"
  if iv.lo > 0:
    return "higher"
  if iv.hi < 0:
    return "lower"
  return "no clear difference"


def _compare(d: Mapping[str, Interval], kinds=("greedy", "sampled")) -> tuple[str, str]:
  """(accuracy, satisfaction) of a baseline against the reference, from the paired
  differences (baseline - reference) of greedy and sampled responses: "higher" when one
  kind's CI lies above 0 and none below, "lower" the reverse, "mixed" when the kinds
  disagree, "comparable" when every CI contains 0 (or nothing is measurable)."""
  out = []
  for metric in ("accuracy", "satisfaction"):
    dirs = {_direction(d.get(f"{metric}_{k}")) for k in kinds}
    out.append("mixed" if {"higher", "lower"} <= dirs else "higher" if "higher" in dirs
               else "lower" if "lower" in dirs else "comparable")
  return out[0], out[1]


def verdict(summary: Mapping[str, Mapping[str, Interval]],
            diffs: Mapping[str, Mapping[str, Interval]], reference: str,
            soft_methods: Sequence[str], gkd_grpo: str) -> str:
  """The plain paragraph: did `reference` beat the soft Lagrangians on satisfaction at
  comparable accuracy, and did it match GKD-GRPO (`gkd_grpo`) in accuracy?

  Each soft_lagrangian setting is read against the reference on accuracy and constraint
  satisfaction, greedy and sampled (`_compare`, paired 95% CIs over seeds). The reference
  beats a setting whose satisfaction is lower and whose accuracy is not higher; a setting
  whose accuracy is higher and whose satisfaction is not lower beats the reference; the
  rest are trade-offs (one more accurate, the other more often within d). The reference
  beat soft_lagrangian when it beat some setting and no setting beat it.
  """
  del summary
  parts = []
  present = [m for m in soft_methods if m in diffs]
  if not present:
    parts.append(f"No soft_lagrangian run finished, so {reference} cannot be compared with it.")
  else:
    beaten, beats, trade, tied = [], [], [], []
    for m in present:
      acc, sat = _compare(diffs[m])
      if sat == "lower" and acc in ("comparable", "lower"):
        beaten.append(m)
      elif acc == "higher" and sat in ("comparable", "higher"):
        beats.append(m)
      elif acc == "comparable" and sat == "comparable":
        tied.append(m)
      else:
        trade.append(m)
    clause = lambda names, text: f"{text} {', '.join(names)}" if names else ""
    found = [c for c in (
        clause(beaten, f"{reference} was more often within d at no lower accuracy than"),
        clause(beats, f"more accurate at no lower satisfaction than {reference}:"),
        clause(tied, f"no clear difference from {reference} in either:"),
        clause(trade, "a trade-off (more accurate or more often within d, not both):"))
             if c]
    parts.append("Against soft_lagrangian (accuracy and satisfaction, greedy and sampled, "
                 "paired 95% CIs): " + "; ".join(found) + ".")
    won = bool(beaten) and not beats
    parts.append(f"So {reference} " + ("beat" if won else "did not beat")
                 + " soft_lagrangian on satisfaction at comparable accuracy"
                 + ("." if won or not beats else
                    f": {', '.join(beats)} matched its satisfaction with higher accuracy."))
  if gkd_grpo in diffs:
    acc = diffs[gkd_grpo].get("accuracy_greedy")
    sat = diffs[gkd_grpo].get("satisfaction_greedy")
    d_acc, d_sat = _direction(acc), _direction(sat)
    matched = d_acc in ("no clear difference", "lower")
    phrase = lambda d: (f"{d} than {reference}'s" if d in ("higher", "lower")
                        else f"{d} from {reference}'s" if d == "no clear difference" else d)
    parts.append(
        f"GKD-GRPO ({gkd_grpo}) had greedy accuracy {phrase(d_acc)} (paired difference "
        f"{fmt_interval(acc, 100.0)} points) and greedy satisfaction {phrase(d_sat)} "
        f"({fmt_interval(sat, 100.0)} points): {reference} "
        + ("matched or exceeded it in accuracy." if matched else "did not match its accuracy."))
  else:
    parts.append(f"GKD-GRPO ({gkd_grpo}) has no results, so the match is not assessed.")
  return " ".join(parts)


# The tension table's columns, in this order (titles and scales from TABLE_COLUMNS).
TENSION_COLUMNS = tuple(
    next(c for c in TABLE_COLUMNS if c[0] == key)
    for key in ("accuracy_greedy", "accuracy_sampled", "accuracy_greedy_mul",
                "accuracy_greedy_nomul", "kl_seq_sampled_mean", "satisfaction_sampled"))


def _against(iv: Interval | None, value: float | None) -> str:
  """"above" / "below" / "level with" a fixed value: where the seeds' 95% CI lies."""
  if iv is None or value is None or iv.n < 2 or math.isnan(iv.half):
    return "not measurable against"
  return "above" if iv.lo > value else "below" if iv.hi < value else "level with"


def tension_text(summary: Mapping[str, Mapping[str, Interval]], budget: float,
                 initial: Mapping[str, float] | None = None,
                 distill_minus_rl: Mapping[str, Interval] | None = None,
                 rl: str = "grpo", distill: str = "gkd") -> str:
  """Both sides of the tension, against the initial student (`initial`: its metrics, one
  model, no seeds): a table, then one sentence per side. Unconstrained RL (`rl`) should gain
  reward by leaving the budget; pure distillation (`distill`) should stay within it with
  less reward than RL (`distill_minus_rl`: the paired differences distill - rl)."""
  initial = dict(initial or {})
  lines = ["| model | " + " | ".join(t for _, t, _ in TENSION_COLUMNS) + " |",
           "|---" * (len(TENSION_COLUMNS) + 1) + "|"]
  if initial:
    lines.append("| initial student | " + " | ".join(
        f"{initial[k] * scale:.{1 if scale != 1.0 else 2}f}" if k in initial else "–"
        for k, _, scale in TENSION_COLUMNS) + " |")
  for name in (rl, distill):
    s = summary.get(name, {})
    lines.append(f"| {name} | " + " | ".join(
        fmt_interval(s.get(k), scale, 1 if scale != 1.0 else 2)
        for k, _, scale in TENSION_COLUMNS) + " |")
  parts = []
  for name in (rl, distill):
    s = summary.get(name, {})
    acc, kl, sat = (s.get(k) for k in ("accuracy_greedy", "kl_seq_sampled_mean",
                                       "satisfaction_sampled"))
    if acc is None or kl is None or sat is None:
      parts.append(f"`{name}` has no results.")
      continue
    side = "above" if kl.mean > budget else "within"
    vs = lambda iv, key, scale, digits=1: _vs(iv, initial.get(key), scale, digits)
    acc_vs, kl_vs = vs(acc, "accuracy_greedy", 100.0), vs(kl, "kl_seq_sampled_mean", 1.0, 2)
    sat_vs = vs(sat, "satisfaction_sampled", 100.0)
    parts.append(f"`{name}`: greedy accuracy {fmt_interval(acc, 100.0)}%"
                 + (f" ({acc_vs})" if acc_vs else "") + "; mean sampled KL "
                 f"{fmt_interval(kl, 1.0, 2)} nats ({side} d = {budget:.3g} on average"
                 + (f", {kl_vs}" if kl_vs else "") + "); "
                 f"{fmt_interval(sat, 100.0)}% of sampled responses within d"
                 + (f" ({sat_vs})" if sat_vs else "") + ".")
  if distill_minus_rl and "accuracy_greedy" in distill_minus_rl:
    iv = distill_minus_rl["accuracy_greedy"]
    parts.append(f"Paired, `{distill}` - `{rl}` greedy accuracy: "
                 f"{fmt_interval(iv, 100.0)} points ({_direction(iv)}).")
  return "\n".join(lines) + "\n\n" + " ".join(parts)


def _vs(iv: Interval, value: float | None, scale: float, digits: int = 1) -> str:
  """`above the initial student's 76.6`-style clause; empty without an initial value."""
  if value is None:
    return ""
  return f"{_against(iv, value)} the initial student's {value * scale:.{digits}f}"


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


def markdown_report(*, title: str, setting: str, command: str, wall_time_s: float,
                    machine: str, budget_text: str, pretrain_text: str,
                    summary, diffs, reference: str, verdict_text: str,
                    figure: str, tension: str = "") -> str:
  """The whole `arith.md`."""
  return "\n".join([
      f"# {title}", "", "## Setting", "", setting, "",
      "## How it was run", "", "    " + command, "",
      f"Wall time of the invocation that wrote this report: {wall_time_s / 60:.1f} min on "
      f"{machine} (cached stages and finished runs are not repeated).", "",
      "## Teacher, student and budget", "", pretrain_text, "", budget_text, "",
      "## Results (mean ± 95% t-interval half-width over seeds)", "",
      results_table(summary), "",
      f"![accuracy vs KL]({figure})", "",
      f"## Paired comparisons with `{reference}` (per-seed difference, 95% CI; * = excludes 0)",
      "", comparison_table(diffs, reference), "",
      "## The tension: reward against the teacher", "", tension, "",
      "## Verdict", "", verdict_text, ""])
