"""Confidence intervals for reports (pure functions, scipy): over seeds and over problems.

* `t_interval(values)`: a mean over seeds with its two-sided Student-t interval;
* `paired_interval(a, b)`: the t-interval of the per-seed differences `a_i - b_i` (seed i of
  both runs shares its initial model and data order, so the difference removes that noise);
* `wilson_interval(successes, n)`: a proportion over n problems with its Wilson score interval;
* `clustered_proportion(values, clusters)`, `clustered_mean(values, clusters)`: the same
  over responses that come several to a question, counting questions, not responses;
* `reward_cost(rewards, costs)`: corr(R, C) and the cost quantiles of right and wrong answers;
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
  return _wilson(successes / n, n, confidence)


def _wilson(p: float, n: float, confidence: float) -> Interval:
  """Wilson's score interval of a share `p` observed on `n` (possibly effective) trials."""
  z = scipy.stats.norm.ppf((1 + confidence) / 2)
  centre = (p + z * z / (2 * n)) / (1 + z * z / n)
  half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
  return Interval(float(p), float(centre - half), float(centre + half), float(half),
                  int(round(n)))


def _clusters(values, clusters) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """`(values, per-cluster sums, per-cluster counts)`; `clusters` defaults to one each."""
  x = np.asarray(values, np.float64).reshape(-1)
  ids = np.arange(x.size) if clusters is None else np.asarray(clusters).reshape(-1)
  if ids.size != x.size or x.size == 0:
    raise ValueError(f"clustered interval: {x.size} values against {ids.size} cluster ids; "
                     "give one id (e.g. the question) per value, and at least one value.")
  _, inverse = np.unique(ids, return_inverse=True)
  return x, np.bincount(inverse, weights=x), np.bincount(inverse).astype(np.float64)


def clustered_proportion(values, clusters=None, confidence: float = 0.95) -> Interval:
  """The share of 0/1 `values` with a Wilson interval that counts clusters (questions), not
  values, where a cluster holds several (e.g. `pass_k` samples of one question).

  The share's variance is the cluster-robust (ratio-estimator) one, `sum_i (y_i - p n_i)^2 /
  N^2` over clusters `i` of `n_i` values summing to `y_i`; the Wilson interval is taken at
  the effective count `p (1 - p) / variance`. One value per cluster gives `N` itself, so
  distinct questions give `wilson_interval` exactly; `k` identical values per question give
  the interval of one per question. Where the variance is 0 (every value 0, or every value
  1) the count of clusters is used. `n` of the result is the effective count, rounded.
  """
  _check_confidence(confidence, "clustered_proportion")
  x, sums, counts = _clusters(values, clusters)
  p = float(x.mean())
  var = float(np.sum((sums - p * counts) ** 2)) / x.size ** 2
  n_eff = p * (1 - p) / var if var > 0 else float(counts.size)
  return _wilson(p, min(max(n_eff, 1.0), float(x.size)), confidence)


def clustered_mean(values, clusters=None, confidence: float = 0.95) -> Interval:
  """The mean of `values` with a Student-t interval over clusters (questions): the
  cluster-robust variance `C / (C - 1) sum_i (sum_j (x_ij - mean))^2 / N^2` over `C`
  clusters, `C - 1` degrees of freedom. One value per cluster gives `t_interval` exactly.
  `n` of the result is the number of clusters; fewer than 2 give no interval."""
  _check_confidence(confidence, "clustered_mean")
  x, sums, counts = _clusters(values, clusters)
  mean, c = float(x.mean()), counts.size
  if c < 2:
    return Interval(mean, math.nan, math.nan, math.nan, c)
  var = c / (c - 1) * float(np.sum((sums - mean * counts) ** 2)) / x.size ** 2
  half = float(scipy.stats.t.ppf((1 + confidence) / 2, c - 1) * math.sqrt(var))
  return Interval(mean, mean - half, mean + half, half, c)


def reward_cost(rewards, costs, qs: Sequence[float] = (0.1, 0.5, 0.9)) -> dict:
  """How the task reward `R` and the cost `C` of the same responses go together:
  `corr_pearson` and `corr_spearman` (scipy; None where either is constant), and the
  quantiles of `C` of right answers (`R >= 1`) and of wrong ones (`cost_right_q10`, ...,
  `cost_wrong_q90`; None where there are none), with their counts `num_right`,
  `num_wrong`."""
  r = np.asarray(rewards, np.float64).reshape(-1)
  c = np.asarray(costs, np.float64).reshape(-1)
  if r.size != c.size or r.size == 0:
    raise ValueError(f"reward_cost: {r.size} rewards against {c.size} costs; give one of "
                     "each per response, at least one.")
  varies = r.size > 1 and np.ptp(r) > 0 and np.ptp(c) > 0
  out = {"corr_pearson": float(scipy.stats.pearsonr(r, c)[0]) if varies else None,
         "corr_spearman": float(scipy.stats.spearmanr(r, c)[0]) if varies else None}
  for name, rows in (("right", r >= 1), ("wrong", r < 1)):
    out[f"num_{name}"] = int(rows.sum())
    got = quantiles(c[rows], qs) if rows.any() else {f"q{round(100 * q):d}": None for q in qs}
    out.update({f"cost_{name}_{k}": v for k, v in got.items()})
  return out


def quantiles(values: Sequence[float], qs: Sequence[float] = (0.1, 0.5, 0.9)) -> dict[str, float]:
  """`{"q10": ..., "q50": ..., "q90": ...}`: numpy's linear quantiles of `values` (non-empty)."""
  x = np.asarray(values, np.float64)
  if x.size == 0:
    raise ValueError("quantiles: no values.")
  if any(not 0 <= q <= 1 for q in qs):
    raise ValueError(f"quantiles: qs={tuple(qs)} must lie in [0, 1].")
  return {f"q{round(100 * q):d}": float(np.quantile(x, q)) for q in qs}
