"""The grpo-only pilot: its changes in satisfaction and its choice rule on hand-made runs
(3 seeds, 3 settings), the rule's branches worked out by hand, and its report's lines."""
import pytest

from cmdp.study.pilot import analysis, report, run
from tests.training.tiny import load_config_file

SEEDS = (1000, 1001, 1002)
SETTINGS = tuple(dict(learning_rate=lr, num_steps=40) for lr in (1e-5, 2e-5, 4e-5))
INITIAL = {"satisfaction_sampled@q20": 0.20, "satisfaction_sampled@q30": 0.30,
           "satisfaction_sampled@q40": 0.40, "satisfaction_sampled@q50": 0.50}
# Final sampled satisfaction, {learning rate: {budget: per seed}}. Seed-mean falls (points):
#   1e-5: q20 9, q30 3, q40 1, q50 4   (meets 8 at a lower candidate only)
#   2e-5: q20 5, q30 8, q40 8, q50 8   (meets 8 at q50, exactly; q30 and q40 tie)
#   4e-5: q20 10, q30 6, q40 9, q50 12
FINAL = {
    1e-5: dict(q20=(0.11, 0.10, 0.12), q30=(0.27, 0.26, 0.28), q40=(0.39, 0.38, 0.40),
               q50=(0.47, 0.46, 0.45)),
    2e-5: dict(q20=(0.15, 0.14, 0.16), q30=(0.22, 0.21, 0.23), q40=(0.32, 0.31, 0.33),
               q50=(0.42, 0.41, 0.43)),
    4e-5: dict(q20=(0.10, 0.09, 0.11), q30=(0.24, 0.23, 0.25), q40=(0.31, 0.30, 0.32),
               q50=(0.38, 0.37, 0.39)),
}


def _pilot(**changes):
  pilot = dict(seeds=SEEDS, quantiles=(0.2, 0.3, 0.4, 0.5), settings=SETTINGS, target="q50",
               lower=(0.2, 0.3, 0.4), stress_points=0.08)
  return dict(pilot, **changes)


def _results(skip=()):
  out = []
  for s in SETTINGS:
    for i, seed in enumerate(SEEDS):
      if (s["learning_rate"], seed) in skip:
        continue
      metrics = {f"satisfaction_sampled@{b}": v[i] for b, v in FINAL[s["learning_rate"]].items()}
      out.append(dict(method=analysis.setting_name(s), seed=seed, metrics=metrics, wall_s=60.0))
  return out


def test_changes_per_setting_with_their_seed_intervals():
  table = analysis.changes(_pilot(), _results(), INITIAL)
  assert [r["name"] for r in table] == ["grpo/lr1e-05_steps40", "grpo/lr2e-05_steps40",
                                        "grpo/lr4e-05_steps40"]
  q50 = table[1]["change"]["q50"]
  assert q50["per_seed"] == pytest.approx([-0.08, -0.09, -0.07])
  # mean -0.08, sd 0.01: half-width t(0.975, 2) 0.01 / sqrt(3) = 4.3027 x 0.005774
  assert q50["interval"]["mean"] == pytest.approx(-0.08)
  assert q50["interval"]["half"] == pytest.approx(0.024841, abs=1e-6)
  assert q50["interval"]["n"] == 3


def test_the_rule_takes_the_smallest_rate_that_stresses_q50_and_its_largest_lower_fall():
  got = analysis.analyse(_pilot(), _results(), INITIAL)
  choice = got["choice"]
  # 1e-5 loses 4 points at q50; 2e-5 loses 8 (the edge meets it); q30 and q40 tie at 8:
  # the higher quantile.
  assert (choice["learning_rate"], choice["num_steps"], choice["quantile"]) == (2e-5, 40, 0.4)
  assert choice["met"] and choice["budget"] == "q40" and choice["stress"] == pytest.approx(0.08)
  assert choice["lower_losses"] == pytest.approx(dict(q20=0.05, q30=0.08, q40=0.08))
  assert got["missing"] == []


def test_the_lower_target_takes_the_first_setting_stressed_at_a_lower_candidate():
  # 1e-5 loses 9 points at q20 (its largest lower fall): chosen, with q20.
  choice = analysis.choose(_pilot(target="lower"),
                           analysis.changes(_pilot(), _results(), INITIAL))
  assert (choice["learning_rate"], choice["quantile"], choice["met"]) == (1e-5, 0.2, True)
  assert choice["stress"] == pytest.approx(0.09)


def test_when_no_setting_reaches_the_target_the_rule_takes_the_last_one_and_says_so():
  pilot = _pilot(stress_points=0.15)  # no setting loses 15 points at q50 (4e-5: 12)
  choice = analysis.analyse(pilot, _results(), INITIAL)["choice"]
  # the last setting, 4e-5; its lower falls q20 10, q30 6, q40 9: q20
  assert (choice["learning_rate"], choice["quantile"], choice["met"]) == (4e-5, 0.2, False)
  assert choice["stress"] == pytest.approx(0.12)
  text = report.choice_text(pilot, choice, {"q20": 0.05}, [])
  assert "**the stress target was not met** by any setting" in text
  assert "CHOICE = dict(quantile=0.2, learning_rate=4e-05, num_steps=40)" in text


def test_no_choice_until_every_run_finished_and_the_report_table():
  got = analysis.analyse(_pilot(), _results(skip={(4e-5, 1002)}), INITIAL)
  assert got["choice"] is None and got["missing"] == ["grpo/lr4e-05_steps40 seed 1002"]
  assert got["settings"][2]["seeds"] == [1000, 1001]
  found = analysis.analyse(_pilot(), _results(), INITIAL)
  assert report.cell(found["settings"][1]["change"]["q50"]) == "-8.0 ± 2.5 (-8.0, -9.0, -7.0)"
  assert report.points(-1e-9) == "0.0"


def test_the_pilot_uses_seeds_and_a_workdir_of_its_own():
  study = load_config_file("study_arith.py")
  assert tuple(run.pilot_study(study).budget_quantiles) == (0.2, 0.3, 0.4, 0.5)
  study.pilot.seeds = (4, 1000)  # seed 4 is the comparison's (seeds 0-4)
  with pytest.raises(ValueError, match=r"include the comparison's seeds \[4\]"):
    run.pilot_study(study)
  initial = {"student": {"satisfaction_sampled@q50": 0.5, "satisfaction_sampled@q90": 0.9}}
  with pytest.raises(ValueError, match="have no budget q20, q30, q40"):
    run.check_budgets("DIR", {"q50": 1.0, "q90": 4.0}, initial, (0.2, 0.3, 0.4, 0.5))
