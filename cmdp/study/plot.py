"""The study figure: per budget, greedy accuracy against the share of sampled responses
within the budget, each method a point with 95% seed intervals, each family's Pareto front
a line, the initial student a star and the holding rule's edge a dashed line.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position

from cmdp.evaluation.stats import Interval  # pylint: disable=wrong-import-position


def _err(iv: Interval, scale: float = 1.0) -> float:
  return 0.0 if iv.n < 2 or math.isnan(iv.half) else iv.half * scale


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
