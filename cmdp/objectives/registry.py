"""Objectives registered by name, so a config string picks one.

An objective is a pure loss on logits

    loss_fn(student_logits, teacher_logits, batch, hp, state) -> (loss [] f32, metrics {str: [] f32})

with `student_logits [B, L, V]` float32 raw logits of the student (differentiable; the
sampling policy is `softmax(logits / hp.temperature)`), `teacher_logits [B, L, V]` (or None
when the objective needs no teacher; always under stop_gradient), the batch of
`cmdp.objectives`, `hp` an `ObjectiveConfig` (static) and `state` the objective's own state
(a pytree, e.g. the Lagrange multiplier; None for stateless objectives).

An objective also declares:
  * `reads`: the `ObjectiveConfig` fields it reads. Every objective reads the constraint's
    fields (`CONSTRAINT_FIELDS`: metrics and evaluation measure it for all); a field it does
    not read, set away from its default, is an error (`check_fields`).
  * `preset`: field values that define it (e.g. `worst_case` is the Sauté reward on the
    `teacher_nll` cost under the `prefix_mean` constraint). Configs apply them visibly
    (`cmdp.training.config.set_objective`), and a config that contradicts them is refused.
  * `init_state(hp)` / `update_state(state, metrics, hp)` / `state_metrics(state, hp)`:
    its state, updated by the train step after each optimiser step from the step's
    metrics, so the step names no objective.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

from cmdp.objectives.config import ObjectiveConfig

LossFn = Callable[..., tuple]

_REGISTRY: dict[str, "Objective"] = {}

# Fields every objective reads: the constraint (measured for all), memory, the policy.
CONSTRAINT_FIELDS = frozenset({"budget", "cost", "constraint", "cost_discount", "chunk_size",
                               "temperature", "group_size"})
# Fields of the policy-gradient core (cmdp.objectives.policy_gradient).
PG_FIELDS = frozenset({"gamma", "advantage", "normalize_std", "clip_eps", "aggregation",
                       "entropy_coef", "tis_cap"})


def _no_state(hp):
  del hp
  return None


def _same_state(state, metrics, hp):
  del metrics, hp
  return state


def _no_metrics(state, hp):
  del state, hp
  return {}


@dataclasses.dataclass(frozen=True)
class Objective:
  """A registered objective.

  name: its config name.
  loss_fn: `(student_logits, teacher_logits, batch, hp, state) -> (loss, metrics)`.
  on_policy: trains on the student's own samples (needs a rollout per step).
  needs_teacher: reads the teacher's logits.
  constrained: enforces the constraint `C(y) <= d` (the others only have it measured).
  reads: the ObjectiveConfig fields it reads (CONSTRAINT_FIELDS are added).
  preset: ObjectiveConfig field values that define it.
  init_state, update_state, state_metrics: its state (see the module docstring).
  """
  name: str
  loss_fn: LossFn
  on_policy: bool
  needs_teacher: bool
  constrained: bool = False
  reads: frozenset = frozenset()
  preset: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  init_state: Callable = _no_state
  update_state: Callable = _same_state
  state_metrics: Callable = _no_metrics

  def check_fields(self, hp: ObjectiveConfig) -> None:
    """Raises ValueError naming a field that this objective ignores but is set, or that
    contradicts its preset."""
    default = ObjectiveConfig()
    for name, value in self.preset.items():
      if getattr(hp, name) != value:
        preset = ", ".join(f"{k}={v!r}" for k, v in self.preset.items())
        raise ValueError(
            f"config.loss.{name}={getattr(hp, name)!r}: objective {self.name!r} is defined by "
            f"{preset}. Set loss.{name}={value!r}, or pick the objective through the config "
            "file's argument (e.g. configs/tiny.py:objective=" + self.name + "), which "
            "applies its preset.")
    reads = self.reads | CONSTRAINT_FIELDS
    for f in dataclasses.fields(ObjectiveConfig):
      if f.name not in reads and getattr(hp, f.name) != getattr(default, f.name):
        raise ValueError(
            f"config.loss.{f.name}={getattr(hp, f.name)!r} is set, but objective "
            f"{self.name!r} does not read it (it reads {sorted(reads)}). Remove the override, "
            "or pick an objective that uses it.")


def register_objective(name: str, *, on_policy: bool, needs_teacher: bool,
                       constrained: bool = False, reads=(), preset: Mapping | None = None,
                       init_state: Callable = _no_state, update_state: Callable = _same_state,
                       state_metrics: Callable = _no_metrics) -> Callable[[LossFn], LossFn]:
  """Decorator registering `loss_fn` under `name`; a second use of a name raises."""
  def wrap(loss_fn: LossFn) -> LossFn:
    if name in _REGISTRY:
      raise ValueError(f"objective {name!r} is already registered "
                       f"(by {_REGISTRY[name].loss_fn.__module__}); pick another name.")
    _REGISTRY[name] = Objective(name, loss_fn, on_policy, needs_teacher, constrained,
                                frozenset(reads), dict(preset or {}), init_state, update_state,
                                state_metrics)
    return loss_fn
  return wrap


def get_objective(name: str) -> Objective:
  """The objective registered as `name`; an unknown name raises listing the valid ones."""
  if name not in _REGISTRY:
    raise ValueError(f"unknown objective {name!r}; valid names: {available_objectives()}.")
  return _REGISTRY[name]


def available_objectives() -> tuple[str, ...]:
  """Registered objective names, sorted."""
  return tuple(sorted(_REGISTRY))
