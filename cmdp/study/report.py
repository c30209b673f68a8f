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


def verdict(summary: Mapping[str, Mapping[str, Interval]],
            diffs: Mapping[str, Mapping[str, Interval]], reference: str,
            soft_methods: Sequence[str], gkd_grpo: str) -> str:
  """The plain paragraph: did `reference` beat the soft Lagrangians on satisfaction at
  comparable accuracy, and did it match GKD-GRPO (`gkd_grpo`) in accuracy?

  Comparable accuracy: the paired CI of the greedy-accuracy difference contains 0.
  Differences are read from `diffs` (baseline - reference), so "higher" for a baseline
  means the reference is lower.
  """
  parts = []
  comparable = [m for m in soft_methods if m in diffs
                and _direction(diffs[m].get("accuracy_greedy")) == "no clear difference"]
  if not any(m in diffs for m in soft_methods):
    parts.append(f"No soft_lagrangian run finished, so {reference} cannot be compared with it.")
  elif not comparable:
    parts.append(f"No soft_lagrangian setting reached an accuracy comparable to {reference} "
                 "(every paired accuracy CI excludes 0), so satisfaction is not compared at "
                 "equal accuracy.")
  else:
    wins, ties, losses = [], [], []
    for m in comparable:
      d = _direction(diffs[m].get("satisfaction_greedy"))
      (losses if d == "higher" else wins if d == "lower" else ties).append(m)
    parts.append(
        f"At comparable greedy accuracy ({', '.join(comparable)}), {reference} had higher "
        f"greedy constraint satisfaction than {len(wins)} of them"
        + (f" ({', '.join(wins)})" if wins else "")
        + f", no clear difference with {len(ties)}"
        + (f" ({', '.join(ties)})" if ties else "")
        + f" and lower satisfaction than {len(losses)}"
        + (f" ({', '.join(losses)})" if losses else "") + ".")
    parts.append(f"So {reference} " + ("beat" if wins and not losses else "did not beat")
                 + " soft_lagrangian on satisfaction at comparable accuracy.")
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


def tension_text(summary: Mapping[str, Mapping[str, Interval]], budget: float,
                 rl: str = "grpo", distill: str = "gkd", kind: str = "sampled") -> str:
  """One sentence per side of the tension: the unconstrained RL run and pure distillation,
  their accuracy, mean KL against d and satisfaction on `kind` ("sampled": the rollout
  distribution the constraint and the reward are defined on, or "greedy") responses."""
  parts = []
  for name in (rl, distill):
    s = summary.get(name, {})
    acc, kl, sat = (s.get(k) for k in (f"accuracy_{kind}", f"kl_seq_{kind}_mean",
                                       f"satisfaction_{kind}"))
    if acc is None or kl is None or sat is None:
      parts.append(f"`{name}` has no results.")
      continue
    side = "above" if kl.mean > budget else "within"
    parts.append(f"`{name}`: {kind} accuracy {fmt_interval(acc, 100.0)}%, mean KL "
                 f"{fmt_interval(kl, 1.0, 2)} nats ({side} d = {budget:.3g} on average), "
                 f"{fmt_interval(sat, 100.0)}% of {kind} responses within d.")
  return " ".join(parts)


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
