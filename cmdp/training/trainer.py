"""The training run: `train` composes its stages (`cmdp.training.stages`), the heal (a
run of its own, `heal`) and the loop.

Stages of a run (one console line each): heal (optional, cached: `config.heal`; a student
cut from the teacher is refitted there, `student.refit_samples`, and/or distilled), load,
calibrate the budget, evaluate the teacher and the initial student, train (`loop`),
evaluate (`finish`).

One iteration of `loop`:
  1. the next prompts (deterministic, resumable order), checked once on the host;
  2. student rollouts with the KV-cache sampler, each prompt repeated `group_size` times
     inside the compiled sampler (or reference / teacher sequences for off-policy steps of
     `sft` and `gkd`), shifted into the step's fields by one compiled program;
  3. task rewards from the verifier on the decoded responses (host);
  4. the update `train_step(state, teacher_params, batch) -> (state, metrics)`, which runs
     the frozen teacher on the student's own prefixes microbatch by microbatch (inside one
     compiled program, or, for a teacher on its own devices, handing its logits over one
     microbatch at a time).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import time

import jax
import ml_collections
import numpy as np
from jax.sharding import PartitionSpec as P

from cmdp import data
from cmdp.training import calibration
from cmdp.training import checkpoint as ckpt_lib
from cmdp.training import config as config_lib
from cmdp.training import eval_loop
from cmdp.training import experiment as experiment_lib
from cmdp.training import logging as log_lib
from cmdp.training import rollouts
from cmdp.training import stages
from cmdp.training import step as step_lib
from cmdp.training.processes import process_shard, rows_over_processes
from cmdp.training.rollouts import make_batch

log = logging.getLogger(__name__)

# The stages' helpers, by the names other code reads here: cmdp.training.stages and, for the
# budget's calibration on held-out problems, cmdp.training.calibration.
state_shardings = stages.state_shardings
create_state = stages.create_state
refit_student = stages.refit_student
initial_params = stages.initial_params
release_host_memory = stages.release_host_memory
calibration_costs = calibration.calibration_costs
calibrate_budget = calibration.calibrate_budget


def train(config: ml_collections.ConfigDict, workdir: str, *, evaluate_fn=None,
          stage_name: str = "train") -> dict:
  """Runs (or resumes) the experiment in `workdir`; returns the last logged metrics.

  `evaluate_fn(exp, params, step, hp) -> dict` runs at `eval_every` and at the end
  (default `eval_loop.evaluate_and_write`: eval.json, eval.md and `eval/...` scalars).
  `stage_name`: "train", "heal" (the heal stage's own run) or "pretrain <role>" (a
  supervised stage from random weights, `cmdp.study.pretrain`): what the console says.
  """
  default_eval = evaluate_fn is None
  config_lib.validate(config)  # a field that cannot work stops the run before any work
  _check_processes(config, default_eval=default_eval)
  evaluate_fn = evaluate_fn or functools.partial(eval_loop.evaluate_and_write, workdir=workdir)
  os.makedirs(workdir, exist_ok=True)
  exp = models(config, workdir, stage_name)
  if exp is None:  # SIGTERM during the heal: it saved its state; resume later
    return {}
  config = exp.config  # the healed one
  checkpointer = ckpt_lib.Checkpointer(workdir, config.keep_checkpoints,
                                       config.checkpoint_async)
  run = stages.init_or_restore(exp, checkpointer)
  del exp  # the run's own from here (without a loaded student it no longer needs)
  if not run.fresh:
    log.info("Resumed from step %d of %s.", int(run.state.step), workdir)
  else:
    if config.calibrate_budget_quantile > 0:
      run, _ = stages.calibrate(run)
    stages.baselines(run, workdir)
  stages.write_config(config, workdir)
  probe = probe_start(run)
  writer = log_lib.MetricWriter(workdir, start_step=int(run.state.step))
  if probe is not None and int(run.state.step) == 0:
    writer.write(0, probe_metrics(run.exp, run.state.params, probe, run.exp.hp))
  progress = log_lib.Progress(config.num_steps, int(run.state.step), config.progress_bar,
                              desc="heal" if stage_name == "heal" else "train")
  try:
    run, last, stopped = loop(run, checkpointer, writer, progress, evaluate_fn, probe)
    if not stopped:
      finish(run, checkpointer, writer, evaluate_fn)
  finally:
    progress.close()
    writer.close()
    checkpointer.close()
  if not stopped and default_eval and config.eval_at_end:
    stages.report(run, workdir)
  return last


def models(config: ml_collections.ConfigDict, workdir: str,
           stage_name: str = "train") -> experiment_lib.Experiment | None:
  """Stages "heal" and "load": the run's heal (`heal`; never inside the heal's own run,
  `stage_name` "heal"), then its models under the healed config. The load says so unless
  the heal, run here, already did. None when a SIGTERM stopped the heal."""
  healed_here = stage_name != "heal" and config_lib.heals(config)
  # A heal run here loads the models and says so; a finished one reused does not.
  loaded_in_heal = healed_here and not _finished(_heal_dir(config, workdir), config.heal.steps)
  if healed_here:
    config = heal(config, workdir)
    if config is None:
      return None
  return stages.load(config, stage_name, say=not loaded_in_heal)


def loop(run: stages.Run, checkpointer: ckpt_lib.Checkpointer, writer: log_lib.MetricWriter,
         progress: log_lib.Progress, evaluate_fn, probe: dict | None
         ) -> tuple[stages.Run, dict, bool]:
  """Stage "train": the steps from the state's to `num_steps`, each logged (`log_every`),
  probed (`probe_every`, on the `probe` batch), evaluated (`eval_every`, by `evaluate_fn`)
  and checkpointed (`checkpoint_every`) as the config asks. Returns `(run at its last
  state, the last step's metrics row, stopped)`: stopped when a SIGTERM came, the step
  it finished saved. A non-finite step saves the last good state and raises
  FloatingPointError.
  """
  exp, state, it, hp, config = run.exp, run.state, run.prompts, run.exp.hp, run.exp.config
  train_step = exp.make_train_step(hp, run.shardings)
  objective = exp.objective
  last = {}
  with ckpt_lib.PreemptionGuard() as guard:
    for step in range(int(state.step), config.num_steps):
      t0 = time.perf_counter()
      on_policy = objective.on_policy and (
          np.random.default_rng((config.seed, step)).random()
          < config.rollout.on_policy_fraction)
      batch, host = rollouts.next_batch(exp, state, it, step, on_policy)
      t1 = time.perf_counter()
      state, metrics = train_step(state, exp.step_teacher_params, batch)
      metrics = jax.device_get(metrics)
      t2 = time.perf_counter()
      if metrics["nonfinite"]:
        checkpointer.save(step, state, _meta(exp, it, hp), wait=True)
        bad = sorted(k for k, v in metrics.items()
                     if not np.isfinite(v) and k not in step_lib.OPTIONAL_METRICS)
        raise FloatingPointError(
            f"Step {step}: non-finite {bad}; the update was skipped and the last good state "
            f"saved in {checkpointer.directory}. Lower optimizer.learning_rate, tighten "
            "optimizer.grad_clip_norm, or check the data of this batch.")
      shown = {"reward": metrics["task_reward"], "KL": metrics["kl_seq"],
               "sat": metrics["constraint_satisfaction"]}
      if "penalty" in metrics:  # the constraint's price in reward units, beside the reward
        shown["pen"] = metrics["penalty"]
      if "generation_batches" in host:  # dynamic sampling: rollouts this step took
        shown["gen"] = host["generation_batches"]
      tokens_per_s = progress.update(host["new_tokens"], shown)
      # Every figure is measured inside the step; one undefined at this step (NaN) is left out.
      row = {f"train/{k}": v for k, v in metrics.items()
             if not (k in step_lib.OPTIONAL_METRICS and np.isnan(v))}
      row.update({f"train/{k}": v for k, v in host.items() if k != "new_tokens"})
      row.update({"train/budget": hp.budget,
                  "perf/rollout_and_scoring_s": t1 - t0, "perf/update_s": t2 - t1,
                  "perf/step_s": t2 - t0, "perf/tokens_per_s": tokens_per_s,
                  "train/on_policy": float(on_policy)})
      last = row
      done = step + 1
      if config.log_every and (done % config.log_every == 0 or done == config.num_steps):
        writer.write(done, row)
      if probe is not None and (done % config.probe_every == 0 or done == config.num_steps):
        writer.write(done, probe_metrics(exp, state.params, probe, hp))
      if config.eval_every and done % config.eval_every == 0 and done < config.num_steps:
        writer.write(done, evaluate_fn(exp, state.params, done, hp))
      if guard.requested:
        checkpointer.save(done, state, _meta(exp, it, hp), wait=True)
        log.warning("SIGTERM: saved step %d and stopped.", done)
        return dataclasses.replace(run, state=state), last, True
      if config.checkpoint_every and done % config.checkpoint_every == 0:
        checkpointer.save(done, state, _meta(exp, it, hp))
        if not config.checkpoint_async:  # the save's host copy is gone: return its pages
          stages.release_host_memory()
  return dataclasses.replace(run, state=state), last, False


def finish(run: stages.Run, checkpointer: ckpt_lib.Checkpointer, writer: log_lib.MetricWriter,
           evaluate_fn) -> None:
  """Stage "evaluate" at the end: saves the final state (and waits for it), then, with
  `eval_at_end`, evaluates the trained student (`evaluate_fn`) and logs its figures."""
  exp, state = run.exp, run.state
  checkpointer.save(int(state.step), state, _meta(exp, run.prompts, exp.hp), wait=True)
  if exp.config.eval_at_end:
    t0 = time.perf_counter()
    result = evaluate_fn(exp, state.params, int(state.step), exp.hp)
    writer.write(int(state.step), result)
    # A caller's evaluation (the study's) may score other problems than the test split.
    n = int(result.get("eval/student/num_examples", len(exp.test_examples)))
    log_lib.stage("evaluate", f"the trained student on {n} problems "
                  f"({time.perf_counter() - t0:.0f} s)")


def heal(config: ml_collections.ConfigDict, workdir: str) -> ml_collections.ConfigDict | None:
  """Stage "heal": runs (or reuses) the heal of `config.heal` in `heal.dir` (default
  `<workdir>/heal`) and returns `config` with the student starting from it
  (`student.init_workdir`), or `config` itself when it has no heal; None when a SIGTERM
  stopped the heal (its state is saved: the same command resumes it).

  A heal dir holding another heal's run is an error naming `heal.dir`, never overwritten.
  """
  if not config_lib.heals(config):
    return config
  heal_dir = _heal_dir(config, workdir)
  hcfg = config_lib.heal_config(config)
  record = os.path.join(heal_dir, "config.json")
  if os.path.exists(record):
    with open(record) as f:
      if json.load(f) != json.loads(hcfg.to_json_best_effort()):
        raise ValueError(f"config.heal.dir={heal_dir!r} holds a heal of another config "
                         "(its config.json differs); point heal.dir at a new directory.")
  if _finished(heal_dir, hcfg.num_steps):
    log_lib.stage("heal", f"reusing the heal in {heal_dir}")
  else:
    t0 = time.perf_counter()
    try:
      train(hcfg, heal_dir, evaluate_fn=lambda *a: {}, stage_name="heal")
    except ValueError as e:  # the heal's own config: batch_size is heal.batch_size
      raise ValueError(f"The heal run (config.heal; its batch_size is heal.batch_size): "
                       f"{e}") from e
    if not _finished(heal_dir, hcfg.num_steps):
      return None
    done = []
    if hcfg.student.refit_samples:
      done.append(f"refitted on {hcfg.student.refit_samples} teacher samples")
    if hcfg.num_steps:
      done.append(f"{hcfg.num_steps} steps of {hcfg.batch_size} teacher samples (gkd, "
                  "forward KL)")
    log_lib.stage("heal", f"{', then '.join(done)} in {time.perf_counter() - t0:.0f} s: "
                  f"{heal_dir}")
  stages.release_host_memory()  # the heal's models and optimiser state
  return healed(config, workdir)


def healed(config: ml_collections.ConfigDict, workdir: str) -> ml_collections.ConfigDict:
  """`config` with the student starting from its finished heal (`student.init_workdir`),
  as training started; `config` itself when it has no heal. Raises FileNotFoundError when
  the heal of `workdir` (or `heal.dir`) has not finished."""
  if not config_lib.heals(config):
    return config
  heal_dir = _heal_dir(config, workdir)
  if not _finished(heal_dir, config.heal.steps):
    raise FileNotFoundError(f"config.heal: no finished heal ({config.heal.steps} steps) in "
                            f"{heal_dir!r}; run `python -m cmdp.train` with this config "
                            "first (it heals the student), or set heal.dir.")
  out = ml_collections.ConfigDict(config.to_dict())
  out.heal.steps = out.student.refit_samples = 0
  out.student.init_workdir = heal_dir
  return out


def _heal_dir(config: ml_collections.ConfigDict, workdir: str) -> str:
  return config.heal.dir or os.path.join(workdir, "heal")


def _finished(workdir: str, steps: int) -> bool:
  """Whether the run in `workdir` holds its checkpoint of step `steps`."""
  checkpointer = ckpt_lib.Checkpointer(workdir)
  done = checkpointer.latest_step() == steps
  checkpointer.close()
  return done


def probe_batch(exp: experiment_lib.Experiment, params, seed: int) -> dict:
  """The fixed probe set: `probe_prompts` training prompts x group_size responses sampled
  by the student `params` (the initial one), the same in every invocation of a run."""
  cfg = exp.config
  it = data.PromptIterator(exp.train_examples, cfg.probe_prompts, seed=seed + 13,
                           shard=process_shard())
  rng = jax.device_put(jax.random.PRNGKey(seed + 13),
                       jax.sharding.NamedSharding(exp.student_mesh, P()))
  return make_batch(exp, params, it.next_batch(), rng, True)[0]


def probe_start(run: stages.Run) -> dict | None:
  """The run's probe batch (`probe_batch`, sampled by its initial student: its own params
  at step 0, else `initial_params`), None without `probe_every`."""
  exp, state = run.exp, run.state
  if not exp.config.probe_every:
    return None
  return probe_batch(exp, initial_params(exp, state) if int(state.step) else state.params,
                     exp.config.seed)


def probe_metrics(exp: experiment_lib.Experiment, params, batch: dict, hp) -> dict:
  """`probe/...`: the current student's KL (mean, q10/q50/q90) and satisfaction on the
  fixed probe responses."""
  scores = exp.score_sequences(params, batch, hp, group_size=exp.hp.group_size)
  kl = rows_over_processes(scores["kl_seq"])
  cost = rows_over_processes(scores["sequence_cost"])
  out = {"probe/kl_seq_mean": float(np.mean(kl)),
         "probe/constraint_value": float(np.mean(cost)),
         "probe/constraint_satisfaction": float(np.mean(cost <= hp.budget))}
  out.update({f"probe/kl_seq_q{q}": float(np.quantile(kl, q / 100)) for q in (10, 50, 90)})
  return out


def _check_processes(config: ml_collections.ConfigDict, default_eval: bool) -> None:
  """Raises before any work when a multi-process run's batches do not split over its
  processes: each process takes an equal block of every step's prompts (training and budget
  calibration) and of every evaluation batch."""
  n = jax.process_count()
  if n == 1:
    return
  prompts = config.batch_size // config.rollout.group_size
  if prompts % n:
    raise ValueError(f"config.batch_size: {prompts} prompts per step do not split over {n} "
                     "processes; use a multiple of the process count.")
  if config.mesh.teacher_disjoint:  # some processes would hold none of the teacher's rows
    raise ValueError(f"config.mesh.teacher_disjoint: a teacher on devices of its own is not "
                     f"supported across {n} processes; share the student's mesh "
                     "(teacher_disjoint=False), or give it its own tensor size on the same "
                     "devices (mesh.teacher_tensor).")
  evaluates = default_eval and (config.eval_every or config.eval_at_end)
  if evaluates or config.eval.include_teacher or config.eval.include_initial_student:
    if config.eval.batch_size % n:
      raise ValueError(f"config.eval.batch_size={config.eval.batch_size} does not split over "
                       f"{n} processes; use a multiple of the process count.")


def _meta(exp, it, hp) -> dict:
  return {"data": it.state(), "budget": float(hp.budget),
          "student_model": ckpt_lib.model_record(exp.student.config),
          "objective": exp.config.objective}
