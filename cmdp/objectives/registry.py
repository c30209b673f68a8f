"""Objectives registered by name, so a config string picks one.

An objective is a pure loss

    loss_fn(params, batch, *, apply_fn, hp, lam) -> (loss [] f32, metrics {str: [] f32})

with `apply_fn(params, inputs, input_mask) -> logits [B, L, V]`, `hp` an `ObjectiveConfig`
(static) and `lam` the current Lagrange multiplier (a [] array; ignored unless
`uses_lambda`). The batch contract is documented in `cmdp.objectives`.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

LossFn = Callable[..., tuple]

_REGISTRY: dict[str, "Objective"] = {}


@dataclasses.dataclass(frozen=True)
class Objective:
  """A registered objective.

  name: its config name.
  loss_fn: `(params, batch, *, apply_fn, hp, lam) -> (loss, metrics)`.
  on_policy: trains on the student's own samples (needs a rollout per step).
  needs_teacher: reads `batch["teacher_logits"]`.
  uses_lambda: its loss reads `lam` (the trainer then runs the dual update).
  """
  name: str
  loss_fn: LossFn
  on_policy: bool
  needs_teacher: bool
  uses_lambda: bool


def register_objective(name: str, *, on_policy: bool, needs_teacher: bool,
                       uses_lambda: bool) -> Callable[[LossFn], LossFn]:
  """Decorator registering `loss_fn` under `name`; a second use of a name raises."""
  def wrap(loss_fn: LossFn) -> LossFn:
    if name in _REGISTRY:
      raise ValueError(f"objective {name!r} is already registered "
                       f"(by {_REGISTRY[name].loss_fn.__module__}); pick another name.")
    _REGISTRY[name] = Objective(name, loss_fn, on_policy, needs_teacher, uses_lambda)
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
