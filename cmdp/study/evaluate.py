"""The study's evaluation of one model: `cmdp.evaluation.evaluate_model` plus sub-types.

`evaluate_model` (with the functions of `cmdp.training.eval_loop.model_fns`) gives greedy
and sampled accuracy, the satisfaction of `C(y) <= d` and the sequence KL(student ||
teacher) (mean, q10/50/90) with their counts. The study adds, from the same decodes, the
accuracy on the problems of each sub-type (`arith`: with or without a multiplication step)
and the correct counts behind each accuracy (for Wilson intervals): the verifier given to
`evaluate_model` is wrapped to record each problem's 0/1, nothing is decoded twice.

Every model is measured against one constraint, the study's (`study_hp`: its cost,
constraint and d), whatever the run trained on, so satisfaction is comparable across methods.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from cmdp import evaluation
from cmdp.objectives import ObjectiveConfig

SUBTYPE_KEY = "has_mul"  # the arith generator's per-problem flag (cmdp.data.arith)
SUBTYPES = (("mul", True), ("nomul", False))  # metric suffix, flag value


def has_subtype(examples: Sequence) -> np.ndarray:
  """`[N]` bool: the problem has a multiplication step (False when the task has no flag)."""
  return np.asarray([bool((ex.entry or {}).get(SUBTYPE_KEY, False)) for ex in examples], bool)


def recording(fns: evaluation.ModelFns) -> tuple[evaluation.ModelFns, dict]:
  """`fns` whose verifier also records each problem's 0/1, and the record.

  The record maps "greedy" / "sampled" to `{id(example): [0/1, ...]}`: a decoder sets the
  kind of the rollout the next verifier call scores; a padding row (a repeat of an example
  within one call) is recorded once.
  """
  record = {"greedy": {}, "sampled": {}}
  kind = ["greedy"]

  def tagged(decoder, name):
    def run(*args):
      kind[0] = name
      return decoder(*args)
    return run

  def reward(completions, examples):
    ok = np.asarray(fns.reward(completions, examples))
    seen = set()
    for ex, value in zip(examples, ok):
      if id(ex) not in seen:
        seen.add(id(ex))
        record[kind[0]].setdefault(id(ex), []).append(float(value))
    return ok

  return fns._replace(greedy=tagged(fns.greedy, "greedy"), sample=tagged(fns.sample, "sampled"),
                      reward=reward), record


def subtype_metrics(record: dict, examples: Sequence) -> dict:
  """Correct counts and accuracy per decoding kind, overall and per sub-type present:
  `num_correct_<kind>`, `accuracy_<kind>_<sub>`, `num_correct_<kind>_<sub>`, `num_<sub>`."""
  flags = has_subtype(examples)
  out = {}
  for sub, flag in SUBTYPES:
    out[f"num_{sub}"] = int(np.sum(flags == flag))
  for kind, by_id in record.items():
    if not by_id:
      continue
    # Mean over a problem's samples (one per kind unless pass_k > 1).
    correct = np.asarray([np.mean(by_id[id(ex)]) for ex in examples], np.float64)
    out[f"num_correct_{kind}"] = float(correct.sum())
    for sub, flag in SUBTYPES:
      mask = flags == flag
      if mask.any():
        out[f"accuracy_{kind}_{sub}"] = float(correct[mask].mean())
        out[f"num_correct_{kind}_{sub}"] = float(correct[mask].sum())
  return out


def study_hp(hp: ObjectiveConfig, cost: str, constraint: str, budget: float) -> ObjectiveConfig:
  """`hp` measuring the study's constraint `(cost, constraint) <= budget`."""
  return dataclasses.replace(hp, cost=cost, constraint=constraint, budget=float(budget))


def evaluate(exp, params, which: str, hp: ObjectiveConfig, examples: list, *,
             batch_size: int, pass_k: int = 1, other_budgets: dict | None = None) -> dict:
  """Metrics of `which` ("student" or "teacher") with `params` on `examples`: those of
  `evaluate_model` (the student scored under `hp`, and at `other_budgets`) and the
  sub-type accuracies."""
  from cmdp.training import eval_loop  # pylint: disable=g-import-not-at-top
  fns, record = recording(eval_loop.model_fns(exp, which, hp))
  out = evaluation.evaluate_model(fns, params, examples, batch_size=batch_size, pass_k=pass_k,
                                  budget=hp.budget, other_budgets=other_budgets)
  out.update(subtype_metrics(record, examples))
  return out
