"""Protocol version 2 (issue 31) in the study configs: the families on one grid (cmdp with
and without its boundary term), the budgets and settings from the pilot's recorded choice,
and the comparison refused until that choice is recorded."""
import pytest

from cmdp.study import compare, protocol
from tests.training.tiny import load_config_file

STUDIES = ("study_arith.py", "study_smollm2.py")


@pytest.mark.parametrize("name", STUDIES)
def test_version_2_families_on_one_grid_with_a_terminal_only_control(name):
  study = load_config_file(name)
  study.pilot.choice = dict(quantile=0.2, learning_rate=1e-4, num_steps=40)
  protocol.apply_choice(study, 0.5, (0.3, 3.0))
  assert tuple(study.budget_quantiles) == (0.5, 0.2)
  assert (study.run.optimizer.learning_rate, study.run.num_steps) == (1e-4, 40)
  by_family = {}
  for m in study.methods:
    by_family.setdefault(m["family"], []).append(m)
  assert tuple(by_family) == protocol.V2_FAMILIES  # no cmdp_scaled
  for family in ("cmdp_terminal", "cmdp", "cmdp_hinge"):
    assert sorted(m["loss"]["penalty_scale"] for m in by_family[family]) == [0.3, 0.3, 3, 3]
  assert sorted(m["per_budget"]["soft_lambda"] for m in by_family["soft_lagrangian"]) == [
      0.3, 0.3, 3, 3]
  assert [m["name"] for m in by_family["dual_lagrangian"]] == ["dual_lagrangian/q50",
                                                              "dual_lagrangian/q20"]
  assert all(m["loss"]["boundary_width"] == 0.0 and m["loss"]["penalty"] == "terminal"
             for m in by_family["cmdp_terminal"])
  assert all("boundary_width" not in m["loss"] for m in by_family["cmdp"])  # the default
  # The rules judge both cmdp families against the Lagrangians (roles from the table).
  assert {"cmdp_terminal", "cmdp", "cmdp_hinge"} <= set(protocol.of_role("cmdp"))


@pytest.mark.parametrize("name", STUDIES)
def test_the_comparison_refuses_to_run_before_the_pilot_has_chosen(name, tmp_path):
  study = load_config_file(name)
  study.unlock()
  study.pilot.choice = None
  with pytest.raises(ValueError, match=r"^config\.pilot\.choice is missing: the \w+ "
                     r"comparison runs at the lower budget quantile"):
    compare.run_study(study, str(tmp_path), "test")
  assert not list(tmp_path.iterdir())  # refused before any stage


@pytest.mark.parametrize("name", STUDIES)
def test_the_smoke_runs_fix_their_budgets_in_place_of_a_pilot(name):
  study = load_config_file(name, "small")
  assert tuple(study.budget_quantiles) == (0.5, 0.3) and study.pilot.choice
  protocol.require_choice(study)  # passes
