"""The training loop: rollouts -> teacher scoring -> rewards -> the registered objective.

Stages of a run (one console line each): heal (optional, cached: `config.heal`; a student
cut from the teacher is refitted there, `student.refit_samples`, and/or distilled), load,
calibrate the budget, evaluate the teacher and the initial student, train, evaluate.

One iteration:
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

import ctypes
import functools
import gc
import json
import logging
import os
import time

import jax
import ml_collections
import numpy as np
from jax.sharding import PartitionSpec as P

from cmdp import data, evaluation, models, sharding
from cmdp.training import batch as batch_lib
from cmdp.training import calibration
from cmdp.training import checkpoint as ckpt_lib
from cmdp.training import config as config_lib
from cmdp.training import eval_loop
from cmdp.training import experiment as experiment_lib
from cmdp.training import logging as log_lib
from cmdp.training import step as step_lib
from cmdp.training import rollouts
from cmdp.training.rollouts import make_batch
from cmdp.training.processes import process_shard, rows_over_processes

log = logging.getLogger(__name__)


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


# Budget calibration on held-out problems: cmdp.training.calibration (the names stay here).
calibration_costs = calibration.calibration_costs
calibrate_budget = calibration.calibrate_budget


def probe_batch(exp: experiment_lib.Experiment, params, seed: int) -> dict:
  """The fixed probe set: `probe_prompts` training prompts x group_size responses sampled
  by the student `params` (the initial one), the same in every invocation of a run."""
  cfg = exp.config
  it = data.PromptIterator(exp.train_examples, cfg.probe_prompts, seed=seed + 13,
                           shard=process_shard())
  rng = jax.device_put(jax.random.PRNGKey(seed + 13),
                       jax.sharding.NamedSharding(exp.student_mesh, P()))
  return make_batch(exp, params, it.next_batch(), rng, True)[0]


def probe_metrics(exp: experiment_lib.Experiment, params, batch: dict, hp) -> dict:
  """`probe/...`: the current student's KL (mean, q10/q50/q90) and satisfaction on the
  fixed probe responses."""
  scores = exp.score_sequences(params, batch, hp)
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
  # The heal stage (a run of its own, which loads the models first); never inside it.
  healed_here = stage_name != "heal" and config_lib.heals(config)
  # A heal run here loads the models and says so; a finished one reused does not.
  loaded_in_heal = healed_here and not _finished(_heal_dir(config, workdir), config.heal.steps)
  if healed_here:
    config = heal(config, workdir)
    if config is None:  # SIGTERM during the heal: it saved its state; resume later
      return {}
    release_host_memory()  # the heal's models and optimiser state
  t0 = time.perf_counter()
  exp = experiment_lib.build(config)
  hp = exp.hp
  if not loaded_in_heal:
    log_lib.stage("load", f"{_describe(exp, stage_name)} ({time.perf_counter() - t0:.0f} s)")
  checkpointer = ckpt_lib.Checkpointer(workdir, config.keep_checkpoints,
                                       config.checkpoint_async)
  start_fresh = checkpointer.latest_step() is None
  params = exp.student.params
  if start_fresh and config.student.refit_samples and not config.student.init_workdir:
    t0 = time.perf_counter()
    params, fits = refit_student(exp, jax.random.PRNGKey(config.seed + 3))
    log_lib.stage("refit", f"student layers {fits[0].layer}-{fits[-1].layer} (down_proj) "
                  f"on {config.student.refit_samples} teacher samples; residual error at "
                  f"the gap {fits[0].error_before:.2f} -> {fits[0].error_after:.2f} "
                  f"({time.perf_counter() - t0:.0f} s)")
  state, shardings = create_state(exp, params)
  del params
  it = data.PromptIterator(exp.train_examples, rollouts.draw_prompts(config),
                           seed=config.seed, shard=process_shard())
  if not start_fresh:
    state, meta = checkpointer.restore(state, exp.student.config)
    it.restore(meta["data"])
    hp = hp.replace(budget=meta["budget"])
    log.info("Resumed from step %d of %s.", int(state.step), workdir)
  else:
    if config.student.init_workdir:
      state = state.replace(params=initial_params(exp, state))
    if config.calibrate_budget_quantile > 0:
      t0 = time.perf_counter()
      budget, said = calibration.calibrate(exp, state.params,
                                           jax.random.PRNGKey(config.seed + 1))
      hp = hp.replace(budget=budget)
      log_lib.stage("calibrate", f"{said} ({time.perf_counter() - t0:.0f} s)")
  exp = exp.with_hp(hp)  # the calibrated or restored budget
  if start_fresh and (config.eval.include_teacher or config.eval.include_initial_student):
    t0 = time.perf_counter()
    baselines = eval_loop.evaluate_baselines(exp, state.params, hp)
    evaluation.write_results(workdir, 0, baselines)
    release_host_memory()  # the evaluation's decodes and scores
    log_lib.stage("evaluate", f"{' and '.join(m.replace('_', ' ') for m in baselines)} on "
                  f"{len(exp.test_examples)} problems "
                  f"({time.perf_counter() - t0:.0f} s): " + "; ".join(
                      f"{m.replace('_', ' ')} {r['accuracy']:.1%}" for m, r in baselines.items()))
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2))

  train_step = exp.make_train_step(hp, shardings)
  start = int(state.step)
  probe = (probe_batch(exp, initial_params(exp, state) if start else state.params, config.seed)
           if config.probe_every else None)
  writer = log_lib.MetricWriter(workdir, start_step=start)
  if probe is not None and start == 0:
    writer.write(0, probe_metrics(exp, state.params, probe, hp))
  progress = log_lib.Progress(config.num_steps, start, config.progress_bar,
                              desc="heal" if stage_name == "heal" else "train")
  objective = exp.objective
  last = {}
  try:
    with ckpt_lib.PreemptionGuard() as guard:
      for step in range(start, config.num_steps):
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
          return last
        if config.checkpoint_every and done % config.checkpoint_every == 0:
          checkpointer.save(done, state, _meta(exp, it, hp))
          if not config.checkpoint_async:  # the save's host copy is gone: return its pages
            release_host_memory()
    checkpointer.save(int(state.step), state, _meta(exp, it, hp), wait=True)
    if config.eval_at_end:
      t0 = time.perf_counter()
      result = evaluate_fn(exp, state.params, int(state.step), hp)
      writer.write(int(state.step), result)
      # A caller's evaluation (the study's) may score other problems than the test split.
      n = int(result.get("eval/student/num_examples", len(exp.test_examples)))
      log_lib.stage("evaluate", f"the trained student on {n} problems "
                    f"({time.perf_counter() - t0:.0f} s)")
  finally:
    progress.close()
    writer.close()
    checkpointer.close()
  if default_eval and config.eval_at_end and jax.process_index() == 0:
    print(eval_loop.final_report(workdir, hp, kl_is_cost=(hp.cost, hp.constraint) == (
        "reverse_kl", "sum")))
  return last


def heal(config: ml_collections.ConfigDict, workdir: str) -> ml_collections.ConfigDict | None:
  """Runs (or reuses) the heal of `config.heal` in `heal.dir` (default `<workdir>/heal`)
  and returns `config` with the student starting from it (`student.init_workdir`); None
  when a SIGTERM stopped the heal (its state is saved: the same command resumes it).

  A heal dir holding another heal's run is an error naming `heal.dir`, never overwritten.
  """
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


def _finished(workdir: str, steps: int) -> bool:
  """Whether the run in `workdir` holds its checkpoint of step `steps`."""
  checkpointer = ckpt_lib.Checkpointer(workdir)
  done = checkpointer.latest_step() == steps
  checkpointer.close()
  return done


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

