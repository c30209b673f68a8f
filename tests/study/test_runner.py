"""The study's run configs: every method of the full study is a valid trainer config."""
import pytest

from cmdp.objectives import get_objective
from cmdp.study import runner
from cmdp.training import config as config_lib
from tests.training.tiny import load_config_file


def test_every_method_builds_a_valid_run_config():
  study = load_config_file("study_arith.py", None)
  methods = runner.method_list(study)
  names = [m["name"] for m in methods]
  soft = [m["loss"]["soft_lambda"] for m in methods if m["objective"] == "soft_lagrangian"]
  assert len(soft) >= 4 and 0.01 in soft  # the lambda sweep
  assert {"dual_lagrangian_mean", "dual_lagrangian_rate", "worst_case", "grpo", "gkd"} <= set(names)
  kinds = runner.constraint_kinds(study, methods)
  assert kinds == [("reverse_kl", "sum"), ("teacher_nll", "prefix_mean")]
  budgets = {("reverse_kl", "sum"): 20.0, ("teacher_nll", "prefix_mean"): 0.5}
  for m in methods:
    c = runner.run_config(study, "/nonexistent", m, 3, budgets)
    config_lib.validate(c)  # only fields the objective reads; its preset applied
    assert c.objective == m["objective"] and c.seed == 3
    kind = (c.loss.cost, c.loss.constraint)
    assert c.loss.budget == pytest.approx(budgets[kind] * m["budget_scale"])
    for field, value in {**get_objective(m["objective"]).preset, **m["loss"]}.items():
      assert c.loss[field] == value
  by_name = {m["name"]: m for m in methods}
  rate = runner.run_config(study, "/x", by_name["dual_lagrangian_rate"], 0, budgets)
  assert rate.loss.dual_target == "rate"


def test_method_list_refuses_fields_the_objective_ignores():
  study = load_config_file("study_arith.py", "small")
  study.unlock()
  study.methods = [dict(name="gkd_soft", objective="gkd", loss=dict(soft_lambda=0.1),
                        budget_scale=1.0)]
  with pytest.raises(ValueError, match=r"sets \['soft_lambda'\], which objective 'gkd'"):
    runner.method_list(study)
  study.methods = [dict(name="a", objective="grpo"), dict(name="a", objective="gkd")]
  with pytest.raises(ValueError, match="repeated"):
    runner.method_list(study)
