"""Confidence intervals for reports (pure functions, scipy): over seeds and over problems.

* `t_interval(values)`: a mean over seeds with its two-sided Student-t interval;
* `paired_interval(a, b)`: the t-interval of the per-seed differences `a_i - b_i` (seed i of
  both runs shares its initial model and data order, so the difference removes that noise);
* `wilson_interval(successes, n)`: a proportion over n problems with its Wilson score interval;
* `quantiles(values, qs)`: numpy's linear quantiles, keyed `q10`, `q50`, ...

Each interval is an `Interval(mean, lo, hi, half, n)`; with too little data to form one,
`lo`, `hi` and `half` are NaN.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import numpy as np
import scipy.stats


class Interval(NamedTuple):
  """A mean and its confidence interval `[lo, hi]`; `half` is the half-width (for a Wilson
  interval, half of `hi - lo`, which is centred off the mean); `n` the values behind it."""
  mean: float
  lo: float
  hi: float
  half: float
  n: int

  def excludes_zero(self) -> bool:
    """True when the interval lies entirely above or below 0."""
    return bool(self.n >= 2 and (self.lo > 0 or self.hi < 0))


def _finite(values: Sequence[float | None]) -> np.ndarray:
  return np.asarray([v for v in values if v is not None and not math.isnan(v)], np.float64)


def _check_confidence(confidence: float, name: str) -> None:
  if not 0 < confidence < 1:
    raise ValueError(f"{name}: confidence={confidence} must be in (0, 1), e.g. 0.95.")


def t_interval(values: Sequence[float | None], confidence: float = 0.95) -> Interval:
  """Mean of `values` with `mean +- t_{(1+c)/2, n-1} * s / sqrt(n)`, `s` the sample standard
  deviation (ddof=1). None and NaN values are dropped first; n < 2 gives no interval."""
  _check_confidence(confidence, "t_interval")
  x = _finite(values)
  n = int(x.size)
  if n == 0:
    return Interval(math.nan, math.nan, math.nan, math.nan, 0)
  return t_interval_from_moments(float(x.mean()), float(x.std(ddof=1)) if n > 1 else math.nan,
                                 n, confidence)


def t_interval_from_moments(mean: float, sd: float, n: int,
                            confidence: float = 0.95) -> Interval:
  """`t_interval` from a mean, a sample standard deviation (ddof=1) and a count, for
  reports that keep only those; n < 2 gives no interval."""
  if n < 2:
    return Interval(mean, math.nan, math.nan, math.nan, n)
  half = float(scipy.stats.t.ppf((1 + confidence) / 2, n - 1) * sd / math.sqrt(n))
  return Interval(mean, mean - half, mean + half, half, n)


def paired_interval(a: Sequence[float | None], b: Sequence[float | None],
                    confidence: float = 0.95) -> Interval:
  """The t-interval of `a_i - b_i` over the pairs where both are present (not None / NaN)."""
  if len(a) != len(b):
    raise ValueError(f"paired_interval: {len(a)} values against {len(b)}; pass one value of "
                     "each per seed, None where a run is missing.")
  diffs = [x - y for x, y in zip(a, b) if x is not None and y is not None
           and not math.isnan(x) and not math.isnan(y)]
  return t_interval(diffs, confidence)


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> Interval:
  """`successes / n` with its Wilson score interval (one model on n problems)."""
  _check_confidence(confidence, "wilson_interval")
  if n <= 0 or not 0 <= successes <= n:
    raise ValueError(f"wilson_interval: need 0 <= successes={successes} <= n={n}, n > 0.")
  z = scipy.stats.norm.ppf((1 + confidence) / 2)
  p = successes / n
  centre = (p + z * z / (2 * n)) / (1 + z * z / n)
  half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
  return Interval(p, centre - half, centre + half, half, n)


def quantiles(values: Sequence[float], qs: Sequence[float] = (0.1, 0.5, 0.9)) -> dict[str, float]:
  """`{"q10": ..., "q50": ..., "q90": ...}`: numpy's linear quantiles of `values` (non-empty)."""
  x = np.asarray(values, np.float64)
  if x.size == 0:
    raise ValueError("quantiles: no values.")
  if any(not 0 <= q <= 1 for q in qs):
    raise ValueError(f"quantiles: qs={tuple(qs)} must lie in [0, 1].")
  return {f"q{round(100 * q):d}": float(np.quantile(x, q)) for q in qs}
