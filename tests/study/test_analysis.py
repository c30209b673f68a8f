"""A study's analysis (`cmdp.study.analysis.analyse`) on a tiny hand-made study: three seeds
of two cmdp settings, one soft Lagrangian setting and grpo at q50 (and a q90 setting the q50
analysis leaves out), every figure computed by hand."""
import json
import math

import pytest

from cmdp.study import analysis, report

T2 = 4.302653  # t(0.975, 2 dof): 3 seeds
METHODS = [dict(name="cmdp@1/q50", family="cmdp", budget="q50"),
           dict(name="cmdp@3/q50", family="cmdp", budget="q50"),
           dict(name="soft_lagrangian@1/q50", family="soft_lagrangian", budget="q50"),
           dict(name="cmdp@1/q90", family="cmdp", budget="q90"),
           dict(name="grpo", family="grpo", budget=None)]
# (greedy accuracy, sampled satisfaction at q50) per seed
VALUES = {"cmdp@1/q50": [(0.60, 0.50), (0.64, 0.49), (0.62, 0.52)],  # holds
          "cmdp@3/q50": [(0.50, 0.60), (0.50, 0.47), (0.50, 0.60)],  # misses in seed 1
          "soft_lagrangian@1/q50": [(0.58, 0.49), (0.60, 0.50), (0.65, 0.48)],  # holds (edge)
          "cmdp@1/q90": [(0.9, 0.9)] * 3,
          "grpo": [(0.70, 0.40), (0.70, 0.44), (0.70, 0.42)]}  # loses 8 points: stressed
INITIAL = {"student": {"accuracy": 0.5, "satisfaction_sampled@q50": 0.50}}
STUDY = {"rules": {"hold_margin": 0.02, "stress_points": 0.05}}


def _results():
  return [{"method": name, "seed": seed,
           "metrics": {"accuracy_greedy": acc, "satisfaction_sampled@q50": sat,
                       "name_of_run": name},
           "diagnostics": {"train/penalty": 0.1 * seed}}
          for name, rows in VALUES.items() for seed, (acc, sat) in enumerate(rows)]


def _half(values):
  mean = sum(values) / len(values)
  sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
  return T2 * sd / math.sqrt(len(values))


def test_analysis_by_hand():
  found = analysis.analyse(STUDY, METHODS, _results(), {"q50": 0.25}, INITIAL)
  assert found["seeds"] == [0, 1, 2] and list(found["budgets"]) == ["q50"]
  q50 = found["budgets"]["q50"]
  assert q50["d"] == 0.25
  # The runs q50 concerns (its settings and the anchor), read at q50, with diagnostics.
  assert set(q50["per_seed"]) == {"cmdp@1/q50", "cmdp@3/q50", "soft_lagrangian@1/q50", "grpo"}
  assert q50["per_seed"]["grpo"]["1"]["satisfaction_sampled"] == 0.44
  assert q50["per_seed"]["grpo"]["2"]["train/penalty"] == pytest.approx(0.2)

  decision = q50["decision"]
  # holds: satisfaction >= 0.50 - 0.02 in every seed (0.48 is the edge)
  assert decision["holds"] == {"cmdp@1/q50": True, "cmdp@3/q50": False,
                               "soft_lagrangian@1/q50": True}
  # grpo: 0.50 - mean(0.40, 0.44, 0.42) = 0.08 >= 0.05
  assert decision["grpo_loss"] == pytest.approx(0.08) and decision["informative"]
  assert decision["best"] == {"cmdp": "cmdp@1/q50", "soft_lagrangian": "soft_lagrangian@1/q50"}
  beats = decision["beats"]["cmdp"]
  # cmdp@1 - soft@1 in accuracy: +0.02, +0.04, -0.03: not positive in every seed
  assert beats["paired"]["soft_lagrangian@1/q50"] == pytest.approx([0.02, 0.04, -0.03])
  assert not beats["beats"] and beats["reason"] == (
      "not more accurate than soft_lagrangian@1/q50 in every seed")

  acc = q50["summary"]["cmdp@1/q50"]["accuracy_greedy"]
  assert acc["n"] == 3 and acc["mean"] == pytest.approx(0.62)
  assert acc["half"] == pytest.approx(_half([0.60, 0.64, 0.62]), 1e-5)
  assert "name_of_run" not in q50["summary"]["grpo"]  # numbers only
  # Paired with grpo: cmdp@1's satisfaction +0.10, +0.05, +0.10, its accuracy -0.10, -0.06, -0.08.
  sat = q50["paired"]["cmdp@1/q50"]["satisfaction_sampled"]
  assert sat["mean"] == pytest.approx(0.25 / 3) and sat["half"] == pytest.approx(
      _half([0.10, 0.05, 0.10]), 1e-5)
  assert q50["paired"]["cmdp@1/q50"]["accuracy_greedy"]["mean"] == pytest.approx(-0.08)
  # cmdp@3 falls below grpo's satisfaction in none of the seeds either (0.47 > 0.44).
  assert q50["below"] == {m: {"below": 0, "seeds": 3} for m in
                          ("cmdp@1/q50", "cmdp@3/q50", "soft_lagrangian@1/q50")}
  # cmdp@3 (mean 1.67 / 3) is more satisfied than cmdp@1 (1.51 / 3), but does not hold.
  assert q50["most_satisfied"] == {"cmdp": "cmdp@3/q50",
                                   "soft_lagrangian": "soft_lagrangian@1/q50"}
  # Plain data: strict JSON, and the same after a round trip.
  assert json.loads(json.dumps(found, allow_nan=False)) == json.loads(json.dumps(found))


def test_one_seed_has_no_interval_and_still_writes_strict_json():
  results = [r for r in _results() if r["seed"] == 0]
  found = analysis.analyse(STUDY, METHODS, results, {"q50": 0.25}, INITIAL)
  acc = found["budgets"]["q50"]["summary"]["cmdp@1/q50"]["accuracy_greedy"]
  assert acc == {"mean": 0.6, "lo": None, "hi": None, "half": None, "n": 1}
  assert report.fmt_interval(analysis.interval(acc), 100.0) == "60.0"
  json.dumps(found, allow_nan=False)


def test_a_budgets_section_renders_the_analysis():
  found = analysis.analyse(STUDY, METHODS, _results(), {"q50": 0.25}, INITIAL)
  initial = {"student": dict(INITIAL["student"], **{"satisfaction_greedy@q50": 0.6})}
  text = report.budget_section("q50", found["budgets"]["q50"], initial)
  assert text.startswith("### Budget q50: d = 0.25 nats per sequence")
  # 62.0 ± 100 * 4.302653 * 0.02 / sqrt(3) = 5.0; satisfaction (0.50 + 0.49 + 0.52) / 3
  assert "| cmdp@1/q50 (holds) | 3 | 62.0 ± 5.0 | 50.3 ± 3.8 |" in text
  # the same accuracy in every seed: no spread; satisfaction 0.60, 0.47, 0.60 (sd 0.0751)
  assert "| cmdp@3/q50 | 3 | 50.0 ± 0.0 | 55.7 ± 18.6 |" in text
  assert "grpo loses 8.0 points of sampled satisfaction (from 50.0%)" in text
  assert "| cmdp@1/q50 (below grpo in 0 of 3 seeds) | 3 | 8.3 ± 7.2 | -8.0 ± 5.0 |" in text
