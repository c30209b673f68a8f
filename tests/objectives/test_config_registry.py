"""ObjectiveConfig validation and the objective registry."""
import dataclasses

import pytest

from cmdp.objectives import ObjectiveConfig, available_objectives, get_objective
from cmdp.objectives.registry import register_objective

ALL = ("cmdp", "cmdp_hinge", "dual_lagrangian", "gkd", "grpo", "minillm", "sft", "soft_lagrangian",
       "worst_case")


def test_all_objectives_registered_with_flags():
  assert available_objectives() == ALL
  flags = {n: (get_objective(n).on_policy, get_objective(n).needs_teacher,
               get_objective(n).constrained) for n in ALL}
  assert flags["grpo"] == (True, False, False)
  assert flags["cmdp"] == (True, True, True)
  assert flags["worst_case"] == (True, True, True)
  assert flags["cmdp_hinge"] == (True, True, True)
  assert flags["dual_lagrangian"] == (True, True, True)
  assert flags["soft_lagrangian"] == (True, True, True)
  assert flags["gkd"] == (True, True, False)
  assert flags["sft"] == (False, False, False)
  assert get_objective("cmdp").name == "cmdp"


def test_unknown_objective_lists_valid_names():
  with pytest.raises(ValueError, match="unknown objective 'cmpd'.*'cmdp'.*'worst_case'"):
    get_objective("cmpd")


def test_duplicate_registration_raises():
  with pytest.raises(ValueError, match="already registered"):
    register_objective("grpo", on_policy=True, needs_teacher=False)(
        lambda *a, **k: None)


def test_defaults_roundtrip_and_hashable():
  hp = ObjectiveConfig()
  assert (hp.cost, hp.constraint, hp.penalty, hp.penalty_scale, hp.penalty_units,
          hp.cost_discount) == ("reverse_kl", "sum", "terminal", 1.0, "budget", 1.0)
  assert (hp.gamma, hp.clip_eps, hp.pay_reward_if_violated, hp.gkd_beta) == (1.0, 0.2, False, 0.5)
  # The unbiased estimator: leave-one-out baseline, no scale, per-sequence sums.
  assert (hp.advantage, hp.normalize_std, hp.aggregation) == ("loo", False, "sequence_mean")
  assert ObjectiveConfig.from_dict(dataclasses.asdict(hp)) == hp
  assert hash(ObjectiveConfig.from_dict({"budget": 3})) == hash(ObjectiveConfig(budget=3.0))


def test_unknown_key_named_with_suggestion():
  with pytest.raises(ValueError, match=r"'budgte' \(did you mean 'budget'\?\).*valid keys"):
    ObjectiveConfig.from_dict({"budgte": 1.0})


@pytest.mark.parametrize("key,value,fix", [
    ("budget", 0.0, "budget=0.0: must be > 0"),
    ("cost", "kl", r"cost='kl': use one of \('reverse_kl'"),
    ("constraint", "max", "constraint='max'"),
    ("penalty", "linear", "penalty='linear'"),
    ("advantage", "rloo", "advantage='rloo'"),
    ("aggregation", "mean", "aggregation='mean'"),
    ("clip_eps", 0.0, "clip_eps=0.0: must be > 0"),
    ("group_size", 0, "group_size=0: must be >= 1"),
    ("group_size", 2.5, "group_size=2.5: must be an integer"),
    ("gkd_beta", 1.5, r"gkd_beta=1.5: must be in \[0, 1\]"),
    ("gamma", 1.1, "gamma=1.1"),
    ("cost_discount", 0.0, "cost_discount=0.0"),
    ("lambda_init", 200.0, "lambda_init=200.0: must be in"),
    ("normalize_std", 1, "normalize_std=1: must be true or false"),
    ("budget", "ten", "budget='ten': must be a number"),
])
def test_bad_values_named(key, value, fix):
  with pytest.raises(ValueError, match=f"ObjectiveConfig.{fix}"):
    ObjectiveConfig.from_dict({key: value})


@pytest.mark.parametrize("name,field,value", [
    ("grpo", "penalty_scale", 0.5), ("gkd", "clip_eps", 0.3), ("cmdp", "soft_lambda", 0.2),
    ("sft", "gkd_beta", 0.1), ("soft_lagrangian", "lambda_lr", 2.0)])
def test_a_field_the_objective_ignores_is_an_error(name, field, value):
  with pytest.raises(ValueError, match=f"config.loss.{field}=.* does not read it"):
    get_objective(name).check_fields(ObjectiveConfig(**{field: value}))


def test_fields_an_objective_reads_pass():
  get_objective("cmdp").check_fields(ObjectiveConfig(penalty_scale=0.5, budget=3.0))
  get_objective("dual_lagrangian").check_fields(ObjectiveConfig(dual_target="rate"))
  get_objective("grpo").check_fields(ObjectiveConfig(cost="logratio", budget=2.0))
