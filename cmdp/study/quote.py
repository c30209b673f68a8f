"""A study's findings in a few lines, computed from its committed JSON (`compare.write_report`'s
payload) for the README (`cmdp.quote`): per budget, the initial student, the anchors and each
constrained family's best holding setting, and the verdict by the declared rules.

The numbers are the report's own: the seed mean ± 95% t-interval (`stats.summarize`) of the
final greedy accuracy and sampled satisfaction, and the payload's `decisions`.
"""
from __future__ import annotations

from cmdp.study import protocol, report, stats

# (metric key, column title, display scale): the quoted table's columns
QUOTED = (("accuracy_greedy", "accuracy greedy %", 100.0),
          ("satisfaction_sampled", "satisfaction sampled %", 100.0))


def per_budget(payload: dict, budget: str) -> dict:
  """`{method: {seed: metrics read at budget}}` of the runs that budget concerns: its own
  settings and the anchors (which do not read d)."""
  by_name = {m["name"]: m for m in payload["methods"]}
  out = {}
  for r in payload["runs"]:
    if by_name[r["method"]]["budget"] in (budget, None):
      out.setdefault(r["method"], {})[r["seed"]] = protocol.at_budget(r["metrics"], budget)
  return out


def _rows(payload: dict, budget: str, summary: dict) -> list[tuple[str, str]]:
  """`(row label, method name)`: the anchors, then each family's best holding setting, or,
  where none holds, its most satisfied setting."""
  decision = payload["decisions"][budget]
  rows, seen = [], []
  for m in payload["methods"]:
    name, family = m["name"], m["family"]
    if name not in summary:
      continue
    if m["budget"] is None:
      rows.append((f"`{name}` (anchor)", name))
    elif m["budget"] == budget and family not in seen:
      seen.append(family)
      best = decision["best"].get(family)
      if best is not None:
        rows.append((f"`{family}`: best holding, `{best}`", best))
      else:
        mine = [x["name"] for x in payload["methods"]
                if x["family"] == family and x["budget"] == budget and x["name"] in summary]
        top = max(mine, key=lambda n: summary[n]["satisfaction_sampled"].mean)
        rows.append((f"`{family}`: none holds; most satisfied, `{top}`", top))
  return rows


def summary(payload: dict, short: bool = False, only: str | None = None) -> str:
  """Markdown: per budget a heading line, a table (`QUOTED`, with whether the setting
  holds in every seed) and the verdict (`report.verdict_text`); `short`: one line per
  budget, whether the budget was stressed and each cmdp family's verdict; `only` (a key of
  the payload's `decisions`, e.g. "q50"): that budget alone, its verdict in the short line."""
  initial = payload["initial"]["student"]
  seeds = sorted({r["seed"] for r in payload["runs"]})
  out = []
  for budget, decision in payload["decisions"].items():
    if only is not None and budget != only:
      continue
    d = payload["budgets"][budget]
    start = initial[f"satisfaction_sampled@{budget}"]
    verdicts = "; ".join(f"`{f}` {'beats' if v['beats'] else 'does not beat'} the "
                         f"Lagrangians ({v['reason']})" for f, v in decision["beats"].items())
    stressed = "stressed" if decision["informative"] else "not stressed"
    line = f"{stressed}: {report.grpo_change(decision)} of sampled satisfaction; {verdicts}."
    if short:
      out.append(f"- {budget} (d = {d:.4g}): {line}")
      continue
    summ = stats.summarize(per_budget(payload, budget), tuple(k for k, _, _ in QUOTED))
    out += [f"**{budget}**, d = {d:.4g} nats per sequence: the initial student is "
            f"{100 * initial['accuracy']:.1f}% accurate (greedy) with "
            f"{100 * start:.1f}% of its samples within d. Seeds {seeds}, mean ± 95% "
            "t-interval:", "",
            "| | " + " | ".join(t for _, t, _ in QUOTED) + " | holds in every seed |",
            "|---" * (len(QUOTED) + 2) + "|"]
    for label, name in _rows(payload, budget, summ):
      cells = [report.fmt_interval(summ[name].get(k), scale) for k, _, scale in QUOTED]
      holds = decision["holds"].get(name)
      mark = "–" if holds is None else ("yes" if holds else "no")
      out.append(f"| {label} | " + " | ".join(cells) + f" | {mark} |")
    # One budget alone (the README's block): the verdict in one line.
    verdict = (f"**Verdict at {budget}:** {line}" if only is not None else
               report.verdict_text(budget, decision).rstrip("\n"))
    out += ["", verdict, ""]
  return "\n".join(out).rstrip("\n")
