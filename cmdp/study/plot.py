"""The study figure: greedy accuracy against mean sequence KL(student || teacher).

Each method is a point with 95% CI bars on both axes; the named frontiers (the `cmdp`
budgets, the `soft_lagrangian` lambdas) are joined by lines in order of KL; the budget `d`
is a vertical line (it bounds each response's KL; the x axis is the mean over responses).
The initial student (and the teacher's accuracy, when given) are reference marks.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position

from cmdp.evaluation.stats import Interval  # pylint: disable=wrong-import-position

X_KEY, Y_KEY = "kl_seq_greedy_mean", "accuracy_greedy"


def _err(iv: Interval, scale: float = 1.0) -> float:
  return 0.0 if iv.n < 2 or math.isnan(iv.half) else iv.half * scale


def points(summary: Mapping[str, Mapping[str, Interval]]) -> dict[str, tuple]:
  """`{method: (x, x_err, y, y_err)}` for methods with both metrics; y in percent."""
  out = {}
  for method, s in summary.items():
    if X_KEY in s and Y_KEY in s:
      x, y = s[X_KEY], s[Y_KEY]
      out[method] = (x.mean, _err(x), 100 * y.mean, _err(y, 100.0))
  return out


def frontier_line(pts: Mapping[str, tuple], members: Sequence[str]) -> tuple[list, list]:
  """The (x, y) of the frontier's members that have points, sorted by x."""
  xy = sorted((pts[m][0], pts[m][2]) for m in members if m in pts)
  return [p[0] for p in xy], [p[1] for p in xy]


def plot(summary: Mapping[str, Mapping[str, Interval]], frontiers: Mapping[str, Sequence[str]],
         budget: float, path: str, title: str = "",
         initial: Mapping[str, float] | None = None, teacher_accuracy: float | None = None,
         ) -> None:
  """Writes the figure to `path` (PNG); `initial`: the initial student's metrics (a star),
  `teacher_accuracy`: a horizontal line (both one model, no seeds)."""
  pts = points(summary)
  fig, ax = plt.subplots(figsize=(8, 5.5), dpi=120)
  colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  in_frontier = {m: name for name, ms in frontiers.items() for m in ms}
  for k, (name, members) in enumerate(frontiers.items()):
    xs, ys = frontier_line(pts, members)
    if xs:
      ax.plot(xs, ys, "-", color=colors[k % len(colors)], alpha=0.6, label=f"{name} frontier")
  for k, (method, (x, xe, y, ye)) in enumerate(sorted(pts.items())):
    group = in_frontier.get(method)
    color = (colors[list(frontiers).index(group) % len(colors)] if group
             else colors[(len(frontiers) + k) % len(colors)])
    ax.errorbar(x, y, xerr=xe, yerr=ye, fmt="o", color=color, capsize=3, ms=5)
    ax.annotate(method, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=7)
  if initial and X_KEY in initial and Y_KEY in initial:
    ax.plot(initial[X_KEY], 100 * initial[Y_KEY], "k*", ms=11, label="initial student")
  if teacher_accuracy is not None:
    ax.axhline(100 * teacher_accuracy, color="gray", ls=":", lw=1,
               label=f"teacher ({100 * teacher_accuracy:.1f}%)")
  ax.axvline(budget, color="k", ls="--", lw=1, label=f"budget d = {budget:.3g} nats")
  ax.set_xlabel("mean sequence KL(student || teacher), greedy responses (nats)")
  ax.set_ylabel("greedy accuracy (%)")
  ax.set_title(title or "accuracy vs KL to the teacher (95% CI over seeds)")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8, loc="best")
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)


def pareto(xy: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
  """The points no other point beats on both axes (higher is better on each), by x."""
  front = [p for p in xy if not any(q[0] >= p[0] and q[1] >= p[1] and q != p for q in xy)]
  return sorted(front)


def fronts(summaries: Mapping[str, Mapping[str, Mapping[str, Interval]]],
           methods: Sequence[Mapping], initial: Mapping[str, float], path: str,
           hold_margin: float = 0.02) -> str:
  """One panel per budget: greedy accuracy against sampled satisfaction, each method a
  point with 95% seed intervals on both axes, each family's Pareto front a line, the
  initial student a star and its satisfaction less the holding margin a dashed line."""
  family = {m["name"]: m["family"] for m in methods}
  fig, axes = plt.subplots(1, len(summaries), figsize=(6.5 * len(summaries), 5), squeeze=False)
  colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  for ax, (budget, summary) in zip(axes[0], summaries.items()):
    groups = {}
    for name, s in summary.items():
      if "satisfaction_sampled" in s and "accuracy_greedy" in s:
        groups.setdefault(family[name], []).append((name, s))
    for i, (fam, members) in enumerate(sorted(groups.items())):
      color = colors[i % len(colors)]
      xy = []
      for name, s in members:
        x, y = s["satisfaction_sampled"], s["accuracy_greedy"]
        ax.errorbar(100 * x.mean, 100 * y.mean, xerr=_err(x, 100.0), yerr=_err(y, 100.0),
                    fmt="o", color=color, capsize=2, label=None)
        xy.append((100 * x.mean, 100 * y.mean))
      fx, fy = zip(*pareto(xy))
      ax.plot(fx, fy, "-", color=color, label=fam)
    sat = initial.get(f"satisfaction_sampled@{budget}")
    if sat is not None:
      ax.plot(100 * sat, 100 * initial["accuracy"], "*", color="k", markersize=12,
              label="initial student")
      ax.axvline(100 * (sat - hold_margin), color="k", linestyle="--", linewidth=0.8)
    ax.set_xlabel(f"sampled responses within d ({budget}), %")
    ax.set_ylabel("greedy accuracy, %")
    ax.set_title(f"budget {budget}")
    ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path
