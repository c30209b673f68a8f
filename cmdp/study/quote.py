"""A study's findings in a few lines, for the README (`cmdp.quote`): per budget, the initial
student, the anchors and each constrained family's best holding setting, and the verdict by
the declared rules.

The numbers are the report's own: its committed JSON (`report.write`'s payload) analysed as
the report is (`analysis.analyse`: the seed mean ± 95% t-interval of the final greedy
accuracy and sampled satisfaction, the decisions); this module only writes them out.
"""
from __future__ import annotations

from cmdp.study import analysis, report

# (metric key, column title, display scale): the quoted table's columns
QUOTED = (("accuracy_greedy", "accuracy greedy %", 100.0),
          ("satisfaction_sampled", "satisfaction sampled %", 100.0))


def analyse(payload: dict) -> dict:
  """The analysis (`analysis.analyse`) of a study's JSON payload."""
  return analysis.analyse(payload["config"], payload["methods"], payload["runs"],
                          payload["budgets"], payload["initial"])


def _rows(methods: list[dict], budget: str, found: dict) -> list[tuple[str, str]]:
  """`(row label, method name)`: the anchors, then each family's best holding setting, or,
  where none holds, its most satisfied setting; `found` is the budget's analysis."""
  best, top = found["decision"]["best"], found["most_satisfied"]
  rows, seen = [], []
  for m in methods:
    name, family = m["name"], m["family"]
    if name not in found["summary"]:
      continue
    if m["budget"] is None:
      rows.append((f"`{name}` (anchor)", name))
    elif m["budget"] == budget and family not in seen:
      seen.append(family)
      if best.get(family) is not None:
        rows.append((f"`{family}`: best holding, `{best[family]}`", best[family]))
      else:
        rows.append((f"`{family}`: none holds; most satisfied, `{top[family]}`", top[family]))
  return rows


def summary(payload: dict, short: bool = False, only: str | None = None) -> str:
  """Markdown: per budget a heading line, a table (`QUOTED`, with whether the setting
  holds in every seed) and the verdict (`report.verdict_text`); `short`: one line per
  budget, whether the budget was stressed and each cmdp family's verdict; `only` (a budget
  of the payload, e.g. "q50"): that budget alone, its verdict in the short line."""
  initial = payload["initial"]["student"]
  found = analyse(payload)
  out = []
  for budget, per in found["budgets"].items():
    if only is not None and budget != only:
      continue
    d, decision = per["d"], per["decision"]
    start = initial[f"satisfaction_sampled@{budget}"]
    verdicts = "; ".join(f"`{f}` {'beats' if v['beats'] else 'does not beat'} the "
                         f"Lagrangians ({v['reason']})" for f, v in decision["beats"].items())
    stressed = "stressed" if decision["informative"] else "not stressed"
    line = f"{stressed}: {report.grpo_change(decision)} of sampled satisfaction; {verdicts}."
    if short:
      out.append(f"- {budget} (d = {d:.4g}): {line}")
      continue
    summ = analysis.intervals(per["summary"])
    out += [f"**{budget}**, d = {d:.4g} nats per sequence: the initial student is "
            f"{100 * initial['accuracy']:.1f}% accurate (greedy) with "
            f"{100 * start:.1f}% of its samples within d. Seeds {found['seeds']}, mean ± 95% "
            "t-interval:", "",
            "| | " + " | ".join(t for _, t, _ in QUOTED) + " | holds in every seed |",
            "|---" * (len(QUOTED) + 2) + "|"]
    for label, name in _rows(payload["methods"], budget, per):
      cells = [report.fmt_interval(summ[name].get(k), scale) for k, _, scale in QUOTED]
      holds = decision["holds"].get(name)
      mark = "–" if holds is None else ("yes" if holds else "no")
      out.append(f"| {label} | " + " | ".join(cells) + f" | {mark} |")
    # One budget alone (the README's block): the verdict in one line.
    verdict = (f"**Verdict at {budget}:** {line}" if only is not None else
               report.verdict_text(budget, decision).rstrip("\n"))
    out += ["", verdict, ""]
  return "\n".join(out).rstrip("\n")
