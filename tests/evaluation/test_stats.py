"""`cmdp.evaluation.stats` against hand-computed intervals and quantiles."""
import math

import pytest

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
