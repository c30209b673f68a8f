"""The study's methods, its pretrained models' run config and its run directories.

A method is `{"name", "objective", "family", "loss": {...}, "per_budget": {...},
"budget"}` (`cmdp.study.protocol.methods`): the registered objective, its loss overrides
and the loss fields given in budget units (set to value / d), all fields that objective
reads, and the name of the budget it trains at (None for the anchors). Every run of the
study shares `study.run` (batch, rollouts, new tokens, learning rate, steps), the teacher
and the initial student; seed i sets the data order and the sampling of every method, so
seed i's runs are paired.
"""
from __future__ import annotations

import copy
import os

import ml_collections

from cmdp.objectives import get_objective
from cmdp.objectives.registry import CONSTRAINT_FIELDS
from cmdp.study import pretrain

RESULT_FILE = "result.json"  # written last: its presence marks a finished run


class RunInterrupted(RuntimeError):
  """A run stopped before its final evaluation (e.g. on SIGTERM); it resumes on a rerun."""


def method_list(study: ml_collections.ConfigDict) -> list[dict]:
  """The methods as plain dicts, checked: unique names, registered objectives."""
  methods = [m.to_dict() if hasattr(m, "to_dict") else dict(m) for m in study.methods]
  names = [m.get("name") for m in methods]
  optional = ("family", "loss", "per_budget", "budget")
  for m in methods:
    unknown = set(m) - {"name", "objective", *optional}
    if unknown or not m.get("name") or not m.get("objective"):
      raise ValueError(f"config.methods: {m!r} needs 'name' and 'objective' and may have "
                       f"{', '.join(map(repr, optional))} only (unknown: {sorted(unknown)}).")
    m.setdefault("family", m["objective"])
    m.setdefault("loss", {})
    m.setdefault("per_budget", {})
    m.setdefault("budget", None)
    objective = get_objective(m["objective"])  # raises naming the valid objectives
    ignored = (set(m["loss"]) | set(m["per_budget"])) - (objective.reads | CONSTRAINT_FIELDS)
    if ignored:
      raise ValueError(f"config.methods[{m['name']!r}] sets {sorted(ignored)}, which "
                       f"objective {m['objective']!r} does not read; it reads "
                       f"{sorted(objective.reads | CONSTRAINT_FIELDS)}.")
  dup = sorted({n for n in names if names.count(n) > 1})
  if dup:
    raise ValueError(f"config.methods: names {dup} are repeated; give each method its own name.")
  return methods


def base_run_config(study: ml_collections.ConfigDict, workdir: str) -> ml_collections.ConfigDict:
  """`study.run` with the pretrained teacher and initial student filled in (unlocked copy)."""
  c = copy.deepcopy(study.run)
  c.unlock()
  c.tokenizer = "char"
  c.teacher.path = pretrain.hf_dir(workdir, "teacher")
  c.student.path = pretrain.hf_dir(workdir, "student")
  c.student.cut_layers = ()
  c.student.init_workdir = ""
  c.data.task_kwargs = ml_collections.ConfigDict(study.task.to_dict())
  # model_fns reads the response cap; the study passes its own examples and batch size.
  c.eval.max_new_tokens = study.eval.max_new_tokens
  c.eval.batch_size = study.eval.batch_size
  c.eval.pass_k = study.eval.pass_k
  return c


def run_dir(workdir: str, method: str, seed: int) -> str:
  return os.path.join(workdir, "runs", method, f"seed{seed}")
