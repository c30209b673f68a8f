"""Per-method aggregation over seeds: summaries and paired comparisons with the reference.

A study stores, for every method and seed, one dict of scalar metrics (`PerSeed`). Each
figure is reported as a mean with its t-interval over seeds, and each baseline against the
reference method on the per-seed differences (`cmdp.evaluation.stats`: the intervals).
"""
from __future__ import annotations

from typing import Mapping, Sequence

from cmdp.evaluation.stats import Interval, paired_interval, t_interval

PerSeed = Mapping[str, Mapping[int, Mapping[str, float]]]  # method -> seed -> metric -> value


def summarize(per_seed: PerSeed, metrics: Sequence[str],
              confidence: float = 0.95) -> dict[str, dict[str, Interval]]:
  """`{method: {metric: t_interval over seeds}}` for the metrics each method reports."""
  out = {}
  for method, seeds in per_seed.items():
    out[method] = {}
    for m in metrics:
      values = [r[m] for r in seeds.values() if r.get(m) is not None]
      if values:
        out[method][m] = t_interval(values, confidence)
  return out


def paired_differences(per_seed: PerSeed, reference: str, metrics: Sequence[str],
                       confidence: float = 0.95) -> dict[str, dict[str, Interval]]:
  """`{method: {metric: paired_interval(method, reference) over shared seeds}}`.

  Only seeds both runs finished are paired; the reference itself is left out.
  """
  if reference not in per_seed:
    raise ValueError(f"paired_differences: reference method {reference!r} has no results; "
                     f"methods: {sorted(per_seed)}.")
  ref = per_seed[reference]
  out = {}
  for method, seeds in per_seed.items():
    if method == reference:
      continue
    shared = sorted(set(seeds) & set(ref))
    out[method] = {}
    for m in metrics:
      iv = paired_interval([seeds[s].get(m) for s in shared], [ref[s].get(m) for s in shared],
                           confidence)
      if iv.n:
        out[method][m] = iv
  return out
