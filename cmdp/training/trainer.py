"""The training loop: rollouts -> teacher scoring -> rewards -> the registered objective.

One iteration:
  1. the next prompts (deterministic, resumable order), each repeated `group_size` times;
  2. student rollouts with the KV-cache sampler (or reference / teacher sequences for
     off-policy steps of `sft` and `gkd`);
  3. task rewards from the verifier on the decoded responses (host);
  4. the jitted update `train_step(state, teacher_params, batch) -> (state, metrics)`, which
     runs the frozen teacher on the student's own prefixes microbatch by microbatch (a
     teacher on its own devices scores the batch here instead and hands over its logits).
"""
from __future__ import annotations

import functools
import logging
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import PartitionSpec as P

from cmdp import constraint, data, evaluation, sharding
from cmdp.training import batch as batch_lib
from cmdp.training import checkpoint as ckpt_lib
from cmdp.training import eval_loop
from cmdp.training import experiment as experiment_lib
from cmdp.training import logging as log_lib
from cmdp.training import step as step_lib

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


def process_rows(tree):
  """Host (numpy) copies of this process's rows of row-sharded global arrays: every row in a
  one-process run, else the contiguous block this process's devices hold."""
  if jax.process_count() == 1:
    return jax.device_get(tree)

  def rows(x):
    blocks = {}
    for shard in x.addressable_shards:  # replicas (e.g. over "tensor") hold the same rows
      blocks.setdefault(shard.index[0].start or 0, shard.data)
    return np.concatenate([np.asarray(blocks[k]) for k in sorted(blocks)])
  return jax.tree.map(rows, tree)


def sum_over_processes(values: np.ndarray) -> np.ndarray:
  """`values` summed over the processes (a small host vector; itself with one process)."""
  if jax.process_count() == 1:
    return values
  return np.asarray(multihost_utils.process_allgather(values)).sum(axis=0)


def make_batch(exp: experiment_lib.Experiment, params, examples: list, rng, on_policy: bool):
  """Builds one step's batch on the student's mesh; returns `(batch, host_metrics)`.

  `examples` are this process's prompts (`PromptIterator(shard=...)`): every prompt of the
  step in a one-process run. The verifier scores this process's rows on its host; the
  host metrics cover every process's rows.
  """
  cfg = exp.config
  g = exp.hp.group_size
  group = [ex for ex in examples for _ in range(g)]
  if on_policy or cfg.rollout.sft_source == "teacher":
    prompts, prompt_mask = batch_lib.repeat_rows(exp.encode_prompts(examples), g)
    who = "student" if on_policy else "teacher"
    model = exp.student if on_policy else exp.teacher
    mesh = exp.student_mesh if on_policy else exp.teacher_mesh
    prompts, prompt_mask = exp.put_batch((prompts, prompt_mask), mesh)
    # On-policy: the student being trained (`params`), never the initial one.
    rollout = exp.sampler(who)(params if on_policy else model.params, prompts, prompt_mask, rng)
    if not on_policy:
      rollout = exp.put_batch(rollout)
    batch = batch_lib.from_rollout(rollout)
    if not on_policy:  # teacher samples are supervised targets: no sampler log-probs
      batch["old_logprobs"] = jnp.zeros_like(batch["old_logprobs"])
    local = process_rows(rollout)
    completions = batch_lib.decode_responses(exp.tokenizer, local)
    new_tokens = int(np.asarray(local.lengths).sum())
  else:
    seqs = [data.encode_sft(exp.tokenizer, exp.prompt_text(ex.question),
                            ex.solution or f"#### {ex.answer}", cfg.data.sft_max_len)
            for ex in group]
    tokens, attn, loss_mask = (np.stack(x) for x in zip(*seqs))
    batch = exp.put_batch(batch_lib.shift(tokens, attn, loss_mask))
    completions = [ex.solution or f"#### {ex.answer}" for ex in group]
    new_tokens = int(loss_mask.sum())
  task_reward, correct = batch_lib.task_rewards(completions, group, cfg.format_reward_weight)
  batch["task_reward"] = exp.put_batch(task_reward)
  # Every step measures the constraint, so the teacher scores every batch: inside the step
  # when it shares the student's mesh, here (on its own devices) otherwise.
  if not exp.teacher_inside_step:
    batch["teacher_logits"] = exp.teacher_logits(batch["inputs"], batch["input_mask"])
  tokens, right, rows = sum_over_processes(
      np.asarray([new_tokens, correct.sum(), len(correct)], np.float64))
  host = {"new_tokens": int(tokens)}
  if on_policy:  # the student's own accuracy; off-policy rows are reference text
    host["accuracy"] = float(right / rows)
  return batch, host


def calibrate_budget(exp: experiment_lib.Experiment, params, rng) -> float:
  """`calibrate_budget_quantile` of the initial student's per-sequence cost `C(y)` (the
  constraint of `exp.hp`, on samples at the training temperature; docs/method.md)."""
  cfg = exp.config
  n = max(cfg.calibration_prompts, 1)
  costs = []
  it = data.PromptIterator(exp.train_examples, cfg.batch_size // exp.hp.group_size,
                           seed=cfg.seed + 7, shard=_process_shard())
  while len(costs) < n * exp.hp.group_size:
    batch, _ = make_batch(exp, params, it.next_batch(), jax.random.fold_in(rng, len(costs)), True)
    costs.extend(exp.score_sequences(params, batch)["sequence_cost"].tolist())
  return float(constraint.calibrate_budget(np.asarray(costs), cfg.calibrate_budget_quantile))


def _process_shard() -> tuple[int, int]:
  """This process's part of each batch of prompts: `(process_index, process_count)`."""
  return jax.process_index(), jax.process_count()


def _check_processes(config: ml_collections.ConfigDict, default_eval: bool) -> None:
  """Raises before any work what a multi-process run cannot do yet: budget calibration and
  the built-in evaluation read every row's sequence scores on the host
  (`Experiment.score_sequences`, `eval_loop`), which needs a gather across processes."""
  n = jax.process_count()
  if n == 1:
    return
  prompts = config.batch_size // config.loss.group_size
  if prompts % n:
    raise ValueError(f"config.batch_size: {prompts} prompts per step do not split over {n} "
                     "processes; use a multiple of the process count.")
  if config.calibrate_budget_quantile > 0:
    raise ValueError(f"config.calibrate_budget_quantile: budget calibration does not run "
                     f"across {n} processes yet; calibrate in a one-host run and set "
                     "config.loss.budget, with calibrate_budget_quantile=0.")
  evaluates = default_eval and (config.eval_every or config.eval_at_end)
  if evaluates or config.eval.include_teacher or config.eval.include_initial_student:
    raise ValueError(f"config.eval_at_end / eval_every / eval.include_*: evaluation does not "
                     f"run across {n} processes yet; turn them off and evaluate the "
                     "checkpoint on one host (python -m cmdp.evaluate).")


def _meta(exp, it, hp) -> dict:
  return {"data": it.state(), "budget": float(hp.budget),
          "student_model": ckpt_lib.model_record(exp.student.config),
          "objective": exp.config.objective}


def train(config: ml_collections.ConfigDict, workdir: str, *, evaluate_fn=None) -> dict:
  """Runs (or resumes) the experiment in `workdir`; returns the last logged metrics.

  `evaluate_fn(exp, params, step, hp) -> dict` runs at `eval_every` and at the end
  (default `eval_loop.evaluate_and_write`: eval.json, eval.md and `eval/...` scalars).
  """
  default_eval = evaluate_fn is None
  _check_processes(config, default_eval=default_eval)
  evaluate_fn = evaluate_fn or functools.partial(eval_loop.evaluate_and_write, workdir=workdir)
  os.makedirs(workdir, exist_ok=True)
  exp = experiment_lib.build(config)
  hp = exp.hp
  checkpointer = ckpt_lib.Checkpointer(workdir, config.keep_checkpoints)
  state, shardings = create_state(exp, exp.student.params)
  it = data.PromptIterator(exp.train_examples, config.batch_size // hp.group_size,
                           seed=config.seed, shard=_process_shard())
  start_fresh = checkpointer.latest_step() is None
  if not start_fresh:
    state, meta = checkpointer.restore(state, exp.student.config)
    it.restore(meta["data"])
    hp = hp.replace(budget=meta["budget"])
    log.info("Resumed from step %d of %s.", int(state.step), workdir)
  else:
    if config.student.init_workdir:
      state = state.replace(params=_params_from_run(exp, config.student.init_workdir, state))
    if config.calibrate_budget_quantile > 0:
      budget = calibrate_budget(exp, state.params, jax.random.PRNGKey(config.seed + 1))
      hp = hp.replace(budget=budget)
      log.info("Calibrated budget: %.4f", budget)
  exp = exp.with_hp(hp)  # the calibrated or restored budget
  if start_fresh and (config.eval.include_teacher or config.eval.include_initial_student):
    evaluation.write_results(workdir, 0, eval_loop.evaluate_baselines(exp, state.params, hp))
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2))

  train_step = exp.make_train_step(hp, shardings)
  start = int(state.step)
  writer = log_lib.MetricWriter(workdir, start_step=start)
  progress = log_lib.Progress(config.num_steps, start, config.progress_bar)
  objective = exp.objective
  last = {}
  try:
    with ckpt_lib.PreemptionGuard() as guard:
      for step in range(start, config.num_steps):
        t0 = time.perf_counter()
        on_policy = objective.on_policy and (
            np.random.default_rng((config.seed, step)).random()
            < config.rollout.on_policy_fraction)
        rng = jax.random.fold_in(state.rng, step)
        batch, host = make_batch(exp, state.params, it.next_batch(), rng, on_policy)
        t1 = time.perf_counter()
        state, metrics = train_step(state, exp.step_teacher_params, batch)
        metrics = jax.device_get(metrics)
        t2 = time.perf_counter()
        if metrics["nonfinite"]:
          checkpointer.save(step, state, _meta(exp, it, hp), wait=True)
          bad = sorted(k for k, v in metrics.items() if not np.isfinite(v))
          raise FloatingPointError(
              f"Step {step}: non-finite {bad}; the update was skipped and the last good state "
              f"saved in {checkpointer.directory}. Lower optimizer.learning_rate, tighten "
              "optimizer.grad_clip_norm, or check the data of this batch.")
        tokens_per_s = progress.update(host["new_tokens"], {"reward": metrics["task_reward"]})
        row = {f"train/{k}": v for k, v in metrics.items()}
        if "accuracy" in host:
          row["train/accuracy"] = host["accuracy"]
        row.update({"train/budget": hp.budget,
                    "perf/rollout_and_scoring_s": t1 - t0, "perf/update_s": t2 - t1,
                    "perf/step_s": t2 - t0, "perf/tokens_per_s": tokens_per_s,
                    "train/on_policy": float(on_policy)})
        last = row
        done = step + 1
        if config.log_every and (done % config.log_every == 0 or done == config.num_steps):
          writer.write(done, row)
        if config.eval_every and done % config.eval_every == 0 and done < config.num_steps:
          writer.write(done, evaluate_fn(exp, state.params, done, hp))
        if guard.requested:
          checkpointer.save(done, state, _meta(exp, it, hp), wait=True)
          log.warning("SIGTERM: saved step %d and stopped.", done)
          return last
        if config.checkpoint_every and done % config.checkpoint_every == 0:
          checkpointer.save(done, state, _meta(exp, it, hp))
    checkpointer.save(int(state.step), state, _meta(exp, it, hp), wait=True)
    if config.eval_at_end:
      writer.write(int(state.step), evaluate_fn(exp, state.params, int(state.step), hp))
  finally:
    progress.close()
    writer.close()
    checkpointer.close()
  if default_eval and config.eval_at_end and jax.process_index() == 0:
    print(eval_loop.final_report(workdir, hp, kl_is_cost=(hp.cost, hp.constraint) == (
        "reverse_kl", "sum")))
  return last


def _params_from_run(exp, workdir: str, state):
  """The student params of another run's latest checkpoint (e.g. a supervised heal)."""
  other = ckpt_lib.Checkpointer(workdir)
  if other.latest_step() is None:
    raise FileNotFoundError(f"config.student.init_workdir={workdir!r} holds no checkpoint.")
  restored, _ = other.restore(state, exp.student.config)
  other.close()
  return restored.params

