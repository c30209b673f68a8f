"""The pre-registered comparison: its methods (equal grids in budget units) and its decision
rules, on hand-made per-seed numbers."""
import pytest

from cmdp.objectives import get_objective
from cmdp.study import protocol

GRID = (0.3, 3.0)


def test_every_constrained_family_gets_the_same_grid_at_every_budget():
  methods = protocol.methods(GRID, (0.5, 0.9))
  counts = {}
  for m in methods:
    counts.setdefault((m["family"], m["budget"]), []).append(m)
    reads = get_objective(m["objective"]).reads  # every knob is a field the objective reads
    assert set(m["loss"]) | set(m["per_budget"]) <= reads | {"budget"}, m
  for b in ("q50", "q90"):
    for family in ("cmdp", "cmdp_scaled", "cmdp_hinge", "soft_lagrangian"):
      assert len(counts[(family, b)]) == len(GRID), (family, b)
    assert len(counts[("dual_lagrangian", b)]) == 1
  assert {m["name"] for m in methods if m["budget"] is None} == {"grpo", "gkd"}
  soft = [m for m in methods if m["family"] == "soft_lagrangian"]
  assert sorted({m["per_budget"]["soft_lambda"] for m in soft}) == list(GRID)  # lambda d
  cmdp = [m for m in methods if m["family"] == "cmdp"]
  assert {m["loss"]["penalty"] for m in cmdp} == {"terminal"}
  assert len({m["name"] for m in methods}) == len(methods)


def _runs(**by_name):
  """{name: {seed: {"accuracy_greedy": a, "satisfaction_sampled": s}}} from (a, s) lists."""
  return {n: {i: dict(accuracy_greedy=a, satisfaction_sampled=s) for i, (a, s) in enumerate(v)}
          for n, v in by_name.items()}


METHODS = [dict(name="cmdp@1/q50", family="cmdp", budget="q50"),
           dict(name="cmdp@3/q50", family="cmdp", budget="q50"),
           dict(name="soft@1/q50", family="soft_lagrangian", budget="q50"),
           dict(name="dual/q50", family="dual_lagrangian", budget="q50"),
           dict(name="grpo", family="grpo", budget=None)]
INITIAL = {"satisfaction_sampled@q50": 0.50}


def test_decide_by_hand():
  per_seed = _runs(**{
      # holds in every seed (0.48 is the edge: 0.50 - 2 points)
      "cmdp@1/q50": [(0.60, 0.49), (0.62, 0.48), (0.61, 0.52)],
      # more accurate, but misses in seed 1
      "cmdp@3/q50": [(0.70, 0.55), (0.71, 0.47), (0.72, 0.60)],
      "soft@1/q50": [(0.58, 0.50), (0.63, 0.49), (0.59, 0.51)],  # holds
      "dual/q50": [(0.50, 0.40), (0.50, 0.40), (0.50, 0.40)],  # does not hold
      "grpo": [(0.70, 0.44), (0.70, 0.45), (0.70, 0.46)],  # loses 5 points: informative
  })
  got = protocol.decide(per_seed, METHODS, INITIAL, "q50", hold_margin=0.02, stress_points=0.05)
  assert got["holds"] == {"cmdp@1/q50": True, "cmdp@3/q50": False, "soft@1/q50": True,
                          "dual/q50": False}
  assert got["grpo_loss"] == pytest.approx(0.05) and got["informative"]
  assert got["best"]["cmdp"] == "cmdp@1/q50" and got["best"]["dual_lagrangian"] is None
  verdict = got["beats"]["cmdp"]
  # paired differences against soft@1: +0.02, -0.01, +0.02: not positive in every seed
  assert verdict["paired"]["soft@1/q50"] == pytest.approx([0.02, -0.01, 0.02])
  assert not verdict["beats"]
  per_seed["cmdp@1/q50"][1]["accuracy_greedy"] = 0.64
  assert protocol.decide(per_seed, METHODS, INITIAL, "q50", hold_margin=0.02,
                         stress_points=0.05)["beats"]["cmdp"]["beats"]


def test_cmdp_holding_where_no_lagrangian_does_beats_them_and_an_unstressed_budget_says_so():
  per_seed = _runs(**{
      "cmdp@1/q50": [(0.40, 0.50), (0.41, 0.50)],
      "cmdp@3/q50": [(0.40, 0.30), (0.41, 0.30)],
      "soft@1/q50": [(0.60, 0.30), (0.60, 0.30)],
      "dual/q50": [(0.60, 0.47), (0.60, 0.49)],
      "grpo": [(0.70, 0.49), (0.70, 0.50)],  # loses half a point: not stressed
  })
  got = protocol.decide(per_seed, METHODS, INITIAL, "q50", hold_margin=0.02, stress_points=0.05)
  assert got["beats"]["cmdp"]["beats"] and got["beats"]["cmdp"]["rivals"] == []
  assert not got["informative"]


def test_every_method_of_the_smollm2_study_makes_a_valid_run_config():
  """The declared protocol runs as declared: each method's trainer config validates (no
  field its objective ignores), with its knobs in budget units applied to d."""
  from cmdp.study import compare as llm
  from cmdp.training import config as config_lib
  from tests.training.tiny import load_config_file
  study = load_config_file("study_smollm2.py")
  study.pilot.choice = dict(quantile=0.3, learning_rate=6e-6, num_steps=24)  # a pilot's
  protocol.apply_choice(study, 0.5, GRID)
  assert study.seeds == 3 and tuple(study.budget_quantiles) == (0.5, 0.3)
  budgets = {"q50": 0.2, "q30": 0.1}
  healed = llm.base_config(study, "/nonexistent")
  for m in study.methods:
    c = llm.run_config(study, healed, m, 0, budgets)
    config_lib.validate(c)
    hp = config_lib.objective_config(c)
    get_objective(c.objective).check_fields(hp)
    d = budgets[m["budget"] or "q50"]
    assert hp.budget == d and c.batch_size == 64 and hp.group_size == 8
    assert (c.optimizer.learning_rate, c.num_steps) == (6e-6, 24)
    if m["family"] == "soft_lagrangian":
      assert hp.soft_lambda * d == pytest.approx(m["per_budget"]["soft_lambda"])
    if m["family"] == "dual_lagrangian":
      assert (hp.dual_target, hp.violation_target) == ("rate", 0.5 if d == 0.2 else 0.7)
    if m["family"] in ("cmdp_terminal", "cmdp"):  # the term's control, and the shipped term
      assert hp.boundary_width == (0.0 if m["family"] == "cmdp_terminal" else 0.1)


def test_a_family_row_in_the_table_puts_its_methods_on_the_grid(monkeypatch):
  """A new family is one row of `protocol.FAMILIES`: its methods appear at every knob and
  budget (its knob in budget units or per d), and the rules judge it by its role."""
  monkeypatch.setitem(protocol.FAMILIES, "cmdp_new", dict(
      objective="cmdp_hinge", loss={}, knob="penalty_scale", units="budget", rate_field=None,
      role="cmdp"))
  monkeypatch.setitem(protocol.FAMILIES, "soft_new", dict(
      objective="soft_lagrangian", loss={}, knob="soft_lambda", units="per_d",
      rate_field=None, role="lagrangian"))
  methods = protocol.methods(GRID, (0.5, 0.9))
  new = [m for m in methods if m["family"] in ("cmdp_new", "soft_new")]
  assert [m["name"] for m in new] == [
      "cmdp_new@0.3/q50", "cmdp_new@3/q50", "soft_new@0.3/q50", "soft_new@3/q50",
      "cmdp_new@0.3/q90", "cmdp_new@3/q90", "soft_new@0.3/q90", "soft_new@3/q90"]
  assert new[1] == dict(name="cmdp_new@3/q50", objective="cmdp_hinge", family="cmdp_new",
                        loss=dict(penalty_scale=3.0), per_budget={}, budget="q50")
  assert new[2]["loss"] == {} and new[2]["per_budget"] == dict(soft_lambda=0.3)
  assert [m["name"] for m in methods[-2:]] == ["grpo", "gkd"]  # the anchors last, once
  only = protocol.methods(GRID, (0.5,), ("cmdp_new", "grpo"))
  assert [m["name"] for m in only] == ["cmdp_new@0.3/q50", "cmdp_new@3/q50", "grpo"]
  per_seed = _runs(**{"cmdp_new@0.3/q50": [(0.6, 0.5)], "soft_new@0.3/q50": [(0.5, 0.5)],
                      "grpo": [(0.7, 0.3)]})
  got = protocol.decide(per_seed, methods, INITIAL, "q50", hold_margin=0.02,
                        stress_points=0.05)
  assert got["beats"]["cmdp_new"]["rivals"] == ["soft_new@0.3/q50"]
  assert got["beats"]["cmdp_new"]["beats"]


def test_the_dual_targets_the_initial_violation_rate_at_its_budget():
  dual = [m for m in protocol.methods(GRID, (0.9,)) if m["family"] == "dual_lagrangian"]
  assert [m["name"] for m in dual] == ["dual_lagrangian/q90"]
  assert protocol.rate_fields(dual[0], 0.9) == {"violation_target": 0.1}
  assert protocol.rate_fields(dict(name="grpo", family="grpo"), 0.9) == {}
