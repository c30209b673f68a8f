"""`cmdp.evaluation.stats` against hand-computed intervals and quantiles, and numpy / scipy."""
import math

import numpy as np
import pytest
import scipy.stats

from cmdp.evaluation import stats


def test_t_interval_by_hand():
  # mean 3, s = sqrt(2.5), t_{0.975, 4} = 2.776445: half = 2.776445 * sqrt(2.5) / sqrt(5).
  iv = stats.t_interval([1, 2, 3, 4, 5])
  assert iv.mean == 3.0 and iv.n == 5
  assert iv.half == pytest.approx(1.963243, abs=1e-6)
  assert (iv.lo, iv.hi) == pytest.approx((1.036757, 4.963243), abs=1e-6)
  # Two seeds: t_{0.975, 1} = 12.706205, s = sqrt(2), so half = 12.706205.
  assert stats.t_interval([0.0, 2.0]).half == pytest.approx(12.706205, abs=1e-6)
  # 90%: t_{0.95, 4} = 2.131847.
  assert stats.t_interval([1, 2, 3, 4, 5], 0.9).half == pytest.approx(
      2.131847 * math.sqrt(0.5), abs=1e-6)
  one = stats.t_interval([0.7, float("nan"), None])  # NaN / None dropped; one value: no CI
  assert one.mean == 0.7 and one.n == 1 and math.isnan(one.half) and not one.excludes_zero()
  assert stats.t_interval([]).n == 0
  with pytest.raises(ValueError, match="confidence"):
    stats.t_interval([1, 2], confidence=95)


def test_paired_interval_by_hand():
  # Pair 4 is missing in b: diffs (0.1, 0.0, 0.2), mean 0.1, s 0.1, t_{0.975, 2} = 4.302653.
  d = stats.paired_interval([0.5, 0.6, 0.7, 0.9], [0.4, 0.6, 0.5, None])
  assert d.n == 3 and d.mean == pytest.approx(0.1)
  assert d.half == pytest.approx(4.302653 * 0.1 / math.sqrt(3), abs=1e-6)
  assert not d.excludes_zero()  # [-0.148, 0.348]
  assert stats.paired_interval([1.0, 2.0, 3.0], [0.0, 1.1, 1.9]).excludes_zero()
  with pytest.raises(ValueError, match="3 values against 2"):
    stats.paired_interval([1, 2, 3], [1, 2])


def test_wilson_interval_by_hand():
  iv = stats.wilson_interval(8, 10)
  # z = 1.959964: centre (0.8 + z^2/20) / (1 + z^2/10) = 0.716741, half 0.226577.
  assert iv.mean == 0.8 and iv.n == 10
  assert (iv.lo, iv.hi) == pytest.approx((0.490164, 0.943318), abs=1e-5)
  assert iv.half == pytest.approx(0.226577, abs=1e-5)
  zero = stats.wilson_interval(0, 20)  # never outside [0, 1]: [0, z^2 / (n + z^2)]
  assert zero.lo == pytest.approx(0.0, abs=1e-12)
  assert zero.hi == pytest.approx(1.959964 ** 2 / (20 + 1.959964 ** 2), abs=1e-6)
  with pytest.raises(ValueError, match="successes=11"):
    stats.wilson_interval(11, 10)


def test_quantiles_by_hand():
  # numpy's linear quantiles of (1, 2, 3, 5): positions 0.3, 1.5, 2.7.
  assert stats.quantiles([5.0, 1.0, 3.0, 2.0]) == pytest.approx(
      {"q10": 1.3, "q50": 2.5, "q90": 4.4})
  assert stats.quantiles([2.0], (0.25,)) == {"q25": 2.0}
  with pytest.raises(ValueError, match="no values"):
    stats.quantiles([])
  with pytest.raises(ValueError, match="qs"):
    stats.quantiles([1.0], (50,))


def test_clustered_intervals_reduce_to_the_usual_ones_with_one_value_per_question():
  x = np.asarray([1, 0, 0, 1, 1, 0, 1, 1, 1, 0, 0, 1], np.float64)
  assert stats.clustered_proportion(x) == pytest.approx(stats.wilson_interval(7, 12))
  assert stats.clustered_proportion(x, np.arange(12)[::-1]) == pytest.approx(
      stats.wilson_interval(7, 12))
  y = np.asarray([0.3, 1.2, 0.7, 2.5, 0.1, 0.9])
  assert stats.clustered_mean(y) == pytest.approx(stats.t_interval(y))


def test_clustered_intervals_count_questions_not_samples():
  # Four identical samples of each of 12 questions carry the information of 12 answers,
  # not 48: the interval is the one of one answer per question.
  x = np.asarray([1, 0, 0, 1, 1, 0, 1, 1, 1, 0, 0, 1], np.float64)
  repeated, question = np.repeat(x, 4), np.repeat(np.arange(12), 4)
  iv = stats.clustered_proportion(repeated, question)
  assert iv == pytest.approx(stats.wilson_interval(7, 12))
  assert iv.half > stats.wilson_interval(28, 48).half  # the naive interval is too narrow
  y = np.asarray([0.3, 1.2, 0.7, 2.5, 0.1, 0.9])
  m = stats.clustered_mean(np.repeat(y, 3), np.repeat(np.arange(6), 3))
  assert (m.mean, m.half, m.n) == pytest.approx((y.mean(), stats.t_interval(y).half, 6))
  # Unequal clusters, by hand: the cluster-robust variance C/(C-1) sum_i (sum_j e_ij)^2 / N^2.
  v = np.asarray([1.0, 2.0, 4.0, 0.0, 3.0])
  q = np.asarray([0, 0, 1, 2, 2])
  e = v - v.mean()
  var = 3 / 2 * sum(e[q == i].sum() ** 2 for i in range(3)) / 25
  half = scipy.stats.t.ppf(0.975, 2) * math.sqrt(var)
  assert stats.clustered_mean(v, q) == pytest.approx((v.mean(), v.mean() - half,
                                                      v.mean() + half, half, 3))
  # A share: the effective count p (1 - p) / var of the ratio estimator, then Wilson.
  s = np.asarray([1, 1, 0, 0, 0, 1, 0], np.float64)
  g = np.asarray([0, 0, 1, 1, 2, 2, 3])
  p = s.mean()
  var = sum((s[g == i].sum() - p * (g == i).sum()) ** 2 for i in range(4)) / 49
  n_eff = p * (1 - p) / var
  z = scipy.stats.norm.ppf(0.975)
  centre = (p + z * z / (2 * n_eff)) / (1 + z * z / n_eff)
  half = z * math.sqrt(p * (1 - p) / n_eff + z * z / (4 * n_eff ** 2)) / (1 + z * z / n_eff)
  iv = stats.clustered_proportion(s, g)
  assert (iv.lo, iv.hi) == pytest.approx((centre - half, centre + half))
  with pytest.raises(ValueError, match="cluster ids"):
    stats.clustered_mean([1.0, 2.0], [0])


def test_reward_cost_against_numpy_and_scipy():
  rewards = np.asarray([1, 0, 1, 0, 0, 1, 0, 1], np.float64)
  costs = np.asarray([0.2, 3.0, 0.1, 1.5, 0.7, 0.4, 2.2, 0.9])
  out = stats.reward_cost(rewards, costs)
  assert out["corr_pearson"] == pytest.approx(np.corrcoef(rewards, costs)[0, 1])
  assert out["corr_spearman"] == pytest.approx(scipy.stats.spearmanr(rewards, costs)[0])
  assert (out["num_right"], out["num_wrong"]) == (4, 4)
  for name, rows in (("right", rewards == 1), ("wrong", rewards == 0)):
    for q in (10, 50, 90):
      assert out[f"cost_{name}_q{q}"] == pytest.approx(np.quantile(costs[rows], q / 100))
  # A constant reward has no correlation; no right answer, no quantiles of them.
  none_right = stats.reward_cost(np.zeros(3), [1.0, 2.0, 3.0])
  assert none_right["corr_pearson"] is None and none_right["corr_spearman"] is None
  assert none_right["num_right"] == 0 and none_right["cost_right_q50"] is None
  assert none_right["cost_wrong_q50"] == 2.0
