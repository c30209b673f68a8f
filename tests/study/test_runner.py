"""The study's method list: checked before any run."""
import os

import pytest

from cmdp.study import runner
from tests.training.tiny import load_config_file


@pytest.mark.parametrize("name", ["study_arith.py", "study_smollm2.py"])
def test_the_studies_methods_are_valid(name):
  study = load_config_file(name)
  methods = runner.method_list(study)
  # 9 constrained settings a budget (the median, and the pilot's lower quantile once chosen)
  # and the 2 anchors
  assert len({m["name"] for m in methods}) == len(methods) == (20 if study.pilot.choice else 11)


def test_method_list_refuses_fields_the_objective_ignores():
  study = load_config_file("study_arith.py", "small")
  study.unlock()
  study.methods = [dict(name="gkd_soft", objective="gkd", per_budget=dict(soft_lambda=0.1))]
  with pytest.raises(ValueError, match=r"sets \['soft_lambda'\], which objective 'gkd'"):
    runner.method_list(study)
  study.methods = [dict(name="a", objective="grpo"), dict(name="a", objective="gkd")]
  with pytest.raises(ValueError, match="repeated"):
    runner.method_list(study)
  study.methods = [dict(name="a", objective="grpo", budget_scale=2.0)]
  with pytest.raises(ValueError, match=r"unknown: \['budget_scale'\]"):
    runner.method_list(study)


def test_a_supervised_stage_stopped_by_sigterm_is_a_resumable_interruption(tmp_path,
                                                                            monkeypatch):
  """The trainer returns without the stage's final save (SIGTERM): no crash writing its
  time, `run_stage` says None and the study stops with RunInterrupted (resumable)."""
  from cmdp.study import compare, pretrain  # pylint: disable=import-outside-toplevel
  from cmdp.training import trainer  # pylint: disable=import-outside-toplevel
  monkeypatch.setattr(trainer, "train", lambda *a, **k: {})
  study = load_config_file("study_arith.py", "small")
  assert pretrain.run_stage(study, str(tmp_path), "teacher") is None
  assert not os.path.exists(pretrain.hf_dir(str(tmp_path), "teacher"))
  with pytest.raises(runner.RunInterrupted, match="supervised stage"):
    compare.prepare(study, str(tmp_path))
