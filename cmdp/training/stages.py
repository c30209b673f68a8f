"""The stages of a run around its loop, each a plain function; those that do work say one
console line (`log_lib.stage`).

`cmdp.training.trainer.train` composes them (the heal, a run of its own, and the loop live
there); `cmdp.study.compare.prepare` calls load, init_or_restore and calibrate for the
study's shared initial student:

  load            the models (`experiment.build`), and what the run distils
  refit           a fresh student cut from the teacher, refitted on teacher samples
  init_or_restore the train state: step 0 (from the loaded, refitted or healed student) or
                  the checkpoint's, with its budget and prompt order (`Run`)
  calibrate       budgets at quantiles of the initial student's cost on held-out problems
  baselines       the teacher and the initial student evaluated once, before training
  write_config    the run's config.json
  report          the end-of-run report on the console
"""
from __future__ import annotations

import ctypes
import dataclasses
import gc
import os
import time
from typing import Any, Callable, Sequence

import jax
import ml_collections
import numpy as np
from jax.sharding import PartitionSpec as P

from cmdp import data, evaluation, models, sharding
from cmdp.training import batch as batch_lib
from cmdp.training import calibration
from cmdp.training import checkpoint as ckpt_lib
from cmdp.training import eval_loop
from cmdp.training import experiment as experiment_lib
from cmdp.training import logging as log_lib
from cmdp.training import rollouts
from cmdp.training import step as step_lib
from cmdp.training.processes import process_shard


@dataclasses.dataclass(frozen=True)
class Run:
  """A run between its stages: the experiment (its `hp` carrying the run's budget, the
  configured, calibrated or restored one), the train state and its shardings, the training
  prompts' iterator at the state's step, and whether the run starts at step 0 (no
  checkpoint to resume)."""
  exp: experiment_lib.Experiment
  state: step_lib.TrainState
  shardings: Any
  prompts: data.PromptIterator
  fresh: bool

  def with_budget(self, budget: float) -> "Run":
    """The same run with the budget `d` (`hp.budget`) replaced."""
    return dataclasses.replace(self, exp=self.exp.with_hp(self.exp.hp.replace(budget=budget)))


def state_shardings(exp: experiment_lib.Experiment, state: step_lib.TrainState):
  """NamedShardings of the train state: params and optimiser moments follow the param rules."""
  mesh = exp.student_mesh
  specs = step_lib.TrainState(
      step=P(),
      params=sharding.param_specs(state.params, mesh, exp.student.config),
      # Optimiser moments mirror the params; its counters are replicated.
      opt_state=sharding.param_specs(state.opt_state, mesh, exp.student.config,
                                     sharding.PARAM_RULES + ((r".*", P()),)),
      objective_state=jax.tree.map(lambda _: P(), state.objective_state),
      rng=P())
  return sharding.named(mesh, specs)


def create_state(exp: experiment_lib.Experiment, params):
  """The initial sharded `TrainState` and its shardings."""
  def init(p):
    return step_lib.init_state(p, exp.optimizer, exp.objective, exp.hp,
                               jax.random.PRNGKey(exp.config.seed))
  abstract = jax.eval_shape(init, params)
  shardings = state_shardings(exp, abstract)
  return jax.jit(init, out_shardings=shardings)(params), shardings


def load(config: ml_collections.ConfigDict, stage_name: str = "train", *,
         say: bool = True) -> experiment_lib.Experiment:
  """Stage "load": builds the experiment of `config` (models on their meshes, data) and,
  with `say`, says what the run distils and how long loading took (`stage_name` as in
  `trainer.train`)."""
  t0 = time.perf_counter()
  exp = experiment_lib.build(config)
  if say:
    log_lib.stage("load", f"{_describe(exp, stage_name)} ({time.perf_counter() - t0:.0f} s)")
  return exp


def refit_student(exp: experiment_lib.Experiment, rng) -> tuple[dict, list]:
  """The student cut from the teacher (`student.cut_layers`), refitted by layer-wise least
  squares (`cmdp.models.refit_cut`) on `student.refit_samples` teacher samples of training
  prompts at the rollout temperature; returns `(params, fits)`.

  The samples come in passes of `calibration_batch_size` (else `batch_size`) prompts; in a
  multi-process run each process samples its own rows of every pass and the fit's sums run
  over the global arrays.
  """
  cfg = exp.config
  rows = cfg.calibration_batch_size or cfg.batch_size
  it = data.PromptIterator(exp.train_examples, rows, seed=cfg.seed + 11, shard=process_shard())
  sampler = exp.sampler("teacher")
  tokens, masks = [], []
  for i in range(-(-cfg.student.refit_samples // rows)):
    prompts = exp.encode_prompts(it.next_batch())
    batch_lib.check_prompts(*prompts, cfg.data.max_prompt_len, exp.shared_prefix)
    rollout = sampler(exp.teacher.params, *exp.put_prompts(prompts, exp.teacher_mesh),
                      jax.random.fold_in(rng, i), check=False)
    tokens.append(rollout.tokens)
    masks.append(rollout.attention_mask)
  n = cfg.student.refit_samples  # the last pass's surplus rows are left out
  return models.refit_cut(exp.teacher.config, exp.teacher.params,
                          tuple(cfg.student.cut_layers), jax.numpy.concatenate(tokens)[:n],
                          jax.numpy.concatenate(masks)[:n], shared_prefix=exp.shared_prefix,
                          ridge=cfg.student.refit_ridge, batch_size=rows)


def refit(exp: experiment_lib.Experiment):
  """Stage "refit": the params a fresh run's state starts from: the loaded student's, or,
  for a student cut from the teacher with `student.refit_samples` (and no
  `student.init_workdir`), those refitted on teacher samples (`refit_student`)."""
  cfg = exp.config
  if not cfg.student.refit_samples or cfg.student.init_workdir:
    return exp.student.params
  t0 = time.perf_counter()
  params, fits = refit_student(exp, jax.random.PRNGKey(cfg.seed + 3))
  log_lib.stage("refit", f"student layers {fits[0].layer}-{fits[-1].layer} (down_proj) "
                f"on {cfg.student.refit_samples} teacher samples; residual error at "
                f"the gap {fits[0].error_before:.2f} -> {fits[0].error_after:.2f} "
                f"({time.perf_counter() - t0:.0f} s)")
  return params


def init_or_restore(exp: experiment_lib.Experiment,
                    checkpointer: ckpt_lib.Checkpointer | None = None) -> Run:
  """The run's start: the latest checkpoint of `checkpointer` (state, prompt order and
  budget restored), or, with none (or no `checkpointer`: a study's initial student), step
  0 from the `refit` stage's params, or from the params of `student.init_workdir` (a heal's
  or a supervised stage's run)."""
  fresh = checkpointer is None or checkpointer.latest_step() is None
  state, shardings = create_state(exp, refit(exp) if fresh else exp.student.params)
  it = data.PromptIterator(exp.train_examples, rollouts.draw_prompts(exp.config),
                           seed=exp.config.seed, shard=process_shard())
  run = Run(exp=exp, state=state, shardings=shardings, prompts=it, fresh=fresh)
  if not fresh:
    state, meta = checkpointer.restore(state, exp.student.config)
    it.restore(meta["data"])
    return _without_loaded_student(
        dataclasses.replace(run, state=state).with_budget(meta["budget"]))
  if exp.config.student.init_workdir:
    run = dataclasses.replace(run, state=state.replace(params=initial_params(exp, state)))
  return _without_loaded_student(run)


def _without_loaded_student(run: Run) -> Run:
  """The run without the loaded student's params when its student starts from another
  run's (`student.init_workdir`, read again from there when needed): on the main job a
  copy of 0.4 GB the state no longer shares."""
  exp = run.exp
  if not exp.config.student.init_workdir:
    return run
  return dataclasses.replace(run, exp=dataclasses.replace(
      exp, student=exp.student._replace(params=None)))


# A calibration's console line: `say(exp, calibration) -> str`.
Say = Callable[[experiment_lib.Experiment, calibration.Calibration], str]


def calibrate(run: Run, quantiles: Sequence[float] = (), *, rng=None,
              examples: list | None = None,
              say: Say | None = None) -> tuple[Run, calibration.Calibration]:
  """Stage "calibrate": budgets at `quantiles` (default the run's
  `calibrate_budget_quantile`) of the initial student's per-sequence cost on held-out
  problems (`examples`, default the run's calibration part), sampled with `rng` (default
  `PRNGKey(seed + 1)`), each `constraint.calibrate_budget` of the samples
  (`calibration.calibrate`). Returns the run with the first budget, and the calibration;
  its console line is `say(exp, calibration)` (default `calibration.summary` and the time).
  """
  rng = jax.random.PRNGKey(run.exp.config.seed + 1) if rng is None else rng
  cal = calibration.calibrate(run.exp, run.state.params, rng, quantiles, examples)
  log_lib.stage("calibrate", say(run.exp, cal) if say else
                f"{calibration.summary(run.exp, cal)} ({cal.wall_s:.0f} s)")
  return run.with_budget(cal.budgets[0]), cal


def baselines(run: Run, workdir: str) -> None:
  """Stage "evaluate" before training: the teacher and the initial student, as
  `eval.include_*` ask (`eval_loop.evaluate_baselines`), written to `workdir`'s eval.json
  as step 0; nothing when neither is asked."""
  cfg = run.exp.config.eval
  if not (cfg.include_teacher or cfg.include_initial_student):
    return
  t0 = time.perf_counter()
  results = eval_loop.evaluate_baselines(run.exp, run.state.params, run.exp.hp)
  evaluation.write_results(workdir, 0, results)
  release_host_memory()  # the evaluation's decodes and scores
  log_lib.stage("evaluate", f"{' and '.join(m.replace('_', ' ') for m in results)} on "
                f"{len(run.exp.test_examples)} problems "
                f"({time.perf_counter() - t0:.0f} s): " + "; ".join(
                    f"{m.replace('_', ' ')} {r['accuracy']:.1%}" for m, r in results.items()))


def write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """`workdir/config.json`: the config the run trains under (process 0 writes)."""
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2))


def report(run: Run, workdir: str) -> None:
  """The end-of-run report on the console (`eval_loop.final_report`; process 0)."""
  hp = run.exp.hp
  if jax.process_index() == 0:
    print(eval_loop.final_report(workdir, hp, kl_is_cost=(hp.cost, hp.constraint) == (
        "reverse_kl", "sum")))


def initial_params(exp, state):
  """The student's params at step 0: its heal's (`student.init_workdir`) or its loaded ones."""
  init = exp.config.student.init_workdir
  return _params_from_run(exp, init, state) if init else exp.student.params


def release_host_memory() -> None:
  """Collects garbage and hands freed heap pages back to the OS between stages (glibc's
  `malloc_trim`; elsewhere a no-op). A CPU host's arrays are malloc'd, and glibc keeps what
  a stage freed, so without it the next stage's peak stacks on the last one's leftovers."""
  gc.collect()
  try:
    ctypes.CDLL("libc.so.6").malloc_trim(0)
  except (OSError, AttributeError):
    pass


def _describe(exp, stage_name: str = "train") -> str:
  """`teacher 30 layers (135M parameters) -> student 20 layers (99M parameters)`: what the
  run distils; for a supervised stage from scratch (`stage_name` "pretrain ..."), only the
  model it trains (its stand-in teacher is never read)."""
  def size(model):
    n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(model.params))
    count = next(f"{n / scale:.{d}f}{unit}" for scale, unit, d in (
        (1e9, "B", 1), (1e6, "M", 0), (1e3, "k", 0), (1, "", 0)) if n >= scale or scale == 1)
    layers = model.config.num_layers
    return f"{layers} layer{'s' * (layers != 1)} ({count} parameters)"
  if stage_name.startswith("pretrain"):
    return f"{stage_name}: {size(exp.student)} from random weights, on reference solutions"
  return f"teacher {size(exp.teacher)} -> student {size(exp.student)}"


def _params_from_run(exp, workdir: str, state):
  """The student params of another run's latest checkpoint (e.g. a supervised heal)."""
  other = ckpt_lib.Checkpointer(workdir)
  if other.latest_step() is None:
    raise FileNotFoundError(f"config.student.init_workdir={workdir!r} holds no checkpoint.")
  params = other.restore_params(state.params, exp.student.config)
  other.close()
  return params
