"""The cached supervised stage: a teacher and a student trained from scratch on worked solutions.

Each model is trained by the project's trainer with objective `sft` (cross-entropy on the
reference solutions, `rollout.sft_source="reference"`) on randomly initialised weights,
then written as a Hugging Face directory `DIR/pretrain/<role>/hf` that later runs load
through `teacher.path` / `student.path`. A directory that already holds `hf/config.json`
is reused, so a second study run skips the stage. (The trainer needs some teacher even for
`sft`; a 1-layer, 8-wide random model stands in, since `sft` never reads it.)
"""
from __future__ import annotations

import copy
import os
import time

import jax
import ml_collections
import numpy as np

from cmdp import models
from cmdp.objectives import ObjectiveConfig
from cmdp.training.config import loss_fields, model_fields, set_objective

ROLES = ("teacher", "student")
_DUMMY_TEACHER = dict(hidden_size=8, intermediate_size=8, num_layers=1, num_heads=1,
                      num_kv_heads=1, head_dim=8)


def hf_dir(workdir: str, role: str) -> str:
  """Where the trained `role` model is written as a Hugging Face directory."""
  return os.path.join(workdir, "pretrain", role, "hf")


def sft_config(study: ml_collections.ConfigDict, role: str) -> ml_collections.ConfigDict:
  """The trainer config of one supervised stage (`study.pretrain.<role>`)."""
  if role not in ROLES:
    raise ValueError(f"sft_config: role={role!r}; use one of {ROLES}.")
  p = study.pretrain[role]
  c = copy.deepcopy(study.run)
  c.unlock()
  c.seed = p.seed
  # sft reads aggregation and group_size only. Supervised pretraining averages over tokens
  # (the usual language-model loss; with the default per-sequence sum every step of a
  # from-scratch model would be clipped by optimizer.grad_clip_norm).
  c.loss = loss_fields(ObjectiveConfig(aggregation="token_mean"))
  c.rollout.group_size = 1
  set_objective(c, "sft")
  c.dynamic_sampling.enabled = False  # reference solutions: no rollouts to filter
  c.tokenizer = "char"
  c.teacher.path = ""
  c.teacher.random_init = model_fields(**_DUMMY_TEACHER)
  c.student.path = ""
  c.student.init_workdir = ""
  c.student.random_init = model_fields(**p.model.to_dict())
  c.data.train_size = p.train_size
  c.data.task_kwargs = ml_collections.ConfigDict({**study.task.to_dict(),
                                                  **p.task_overrides.to_dict()})
  c.batch_size = p.batch_size
  c.num_steps = p.steps
  c.optimizer = ml_collections.ConfigDict({**c.optimizer.to_dict(), **p.optimizer.to_dict()})
  c.rollout.sft_source = "reference"
  c.calibrate_budget_quantile = 0.0
  c.eval_at_end = True  # the end-of-run hook writes the Hugging Face directory
  c.eval_every = 0
  c.checkpoint_every = p.checkpoint_every
  c.log_every = 50
  c.progress_bar = False
  c.lock()
  return c


def run_stage(study: ml_collections.ConfigDict, workdir: str, role: str) -> dict | None:
  """Trains `role` unless its Hugging Face directory exists; returns `{"path", "wall_s",
  "cached", "num_params"}`, or None when a SIGTERM stopped the training (its checkpoint is
  saved: the same call resumes it; `wall_s` then counts the resumed part only)."""
  from cmdp.training import trainer  # pylint: disable=g-import-not-at-top
  out = hf_dir(workdir, role)
  if os.path.exists(os.path.join(out, "config.json")):
    return {"path": out, "wall_s": _read_wall(out), "cached": True,
            "num_params": count_params(out)}
  config = sft_config(study, role)
  t0 = time.perf_counter()

  def save(exp, params, step, hp):
    del step, hp
    models.save_pretrained(out, exp.student.config, params, exp.tokenizer)
    return {}

  trainer.train(config, os.path.join(workdir, "pretrain", role), evaluate_fn=save,
                stage_name=f"pretrain {role}")
  if not os.path.exists(os.path.join(out, "config.json")):  # stopped before its end
    return None
  wall = time.perf_counter() - t0
  with open(os.path.join(out, "wall_s.txt"), "w") as f:
    f.write(f"{wall:.1f}\n")
  return {"path": out, "wall_s": wall, "cached": False, "num_params": count_params(out)}


def _read_wall(out: str) -> float:
  path = os.path.join(out, "wall_s.txt")
  return float(open(path).read()) if os.path.exists(path) else float("nan")


def count_params(path: str) -> int:
  """Number of parameters of the saved model (a tied head counted once)."""
  _, params, _ = models.load_pretrained(path)
  return int(sum(np.size(x) for x in jax.tree.leaves(params)))
