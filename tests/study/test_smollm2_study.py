"""`configs/study_smollm2.py:small` end to end (a tiny random teacher in place of SmolLM2):
one heal and one calibration for every run, the protocol's knobs in budget units, the
anchors read at both budgets, the report; a rerun resumes without retraining."""
import json

from cmdp.study import compare as llm
from tests.training.tiny import load_config_file


def test_small_llm_study_end_to_end(tmp_path):
  study = load_config_file("study_smollm2.py", "small")
  workdir = str(tmp_path / "study")
  payload = llm.run_study(study, workdir, "python -m cmdp.study (test)")
  budgets = payload["budgets"]
  assert list(budgets) == ["q50", "q30"] and 0 < budgets["q30"] <= budgets["q50"]
  cal = json.load(open(f"{workdir}/calibration.json"))
  # Each held-out calibration question (at most calibration_prompts draws) group_size times.
  assert 0 < cal["num_questions"] <= study.run.calibration_prompts
  assert len(cal["costs"]) == len(cal["rewards"]) == (
      cal["num_questions"] * study.run.rollout.group_size)
  runs = {r["method"]: r for r in payload["runs"]}
  assert set(runs) == {m["name"] for m in study.methods}
  # cmdp's penalty in budget units, the knobs of every method: test_protocol.py
  cmdp = json.load(open(f"{workdir}/runs/cmdp@3/q50/seed0/config.json"))
  assert (cmdp["loss"]["penalty"], cmdp["loss"]["penalty_units"]) == ("terminal", "budget")
  assert cmdp["student"]["init_workdir"] == f"{workdir}/heal"  # the shared heal
  for r in payload["runs"]:
    m = r["metrics"]
    for b in budgets:  # every run is read at both budgets from the same responses
      assert 0 <= m[f"satisfaction_sampled@{b}"] <= 1
    assert m["satisfaction_sampled@q30"] <= m["satisfaction_sampled@q50"]
    assert "train/groups_mixed" in r["diagnostics"] and "probe/last_satisfaction" in r["diagnostics"]
  decisions = payload["decisions"]
  holds = decisions["q50"]["holds"]
  assert set(holds) == {"cmdp@3/q50", "dual_lagrangian/q50"}  # the constrained runs at q50
  start = payload["initial"]["student"]["satisfaction_sampled@q50"]
  for name, held in holds.items():  # the rule by hand: one seed, within 2 points of the start
    final = next(r["metrics"]["satisfaction_sampled@q50"] for r in payload["runs"]
                 if r["method"] == name)
    assert held == (final >= start - 0.02 - 1e-9), name
  # The dual Lagrangian, which starts from the shared heal with a state of its own, is the
  # Lagrangian rival when it holds.
  assert decisions["q50"]["beats"]["cmdp"]["rivals"] == (
      ["dual_lagrangian/q50"] if holds["dual_lagrangian/q50"] else [])
  md = open(f"{workdir}/results/smollm2_v2.md").read()
  assert "## Protocol (declared before the runs)" in md and "**Verdict at q50.**" in md
  assert open(f"{workdir}/results/smollm2_v2.png", "rb").read(4) == b"\x89PNG"
  # A rerun reads every finished run.
  marker = tmp_path / "study" / "runs" / "grpo" / "seed0" / "result.json"
  stamp = marker.stat().st_mtime
  again = llm.run_study(study, workdir, "again")
  assert marker.stat().st_mtime == stamp
  assert json.dumps(again["runs"]) == json.dumps(payload["runs"])
