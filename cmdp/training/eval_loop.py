"""Evaluation inside a run: the trainer's layer hands `cmdp.evaluation` its functions.

`model_fns(exp, which, hp)` builds what evaluation needs of the student or the teacher
(prompts on the model's mesh, greedy and sampled decoders, decoding, the verifier and, for
the student, the scorer of the run's constraint); the rest is bookkeeping of eval.json.

In a multi-process run every process evaluates its own block of each batch (its prompts
join the global batch the compiled sampler decodes; it verifies and scores its own rows)
and the per-response figures are gathered, so every process gets the metrics one process
would; process 0 alone writes eval.json, eval.md and the report.
"""
from __future__ import annotations

import numpy as np

from cmdp import evaluation
from cmdp.objectives import ObjectiveConfig
from cmdp.training import batch as batch_lib
from cmdp.training import processes


def model_fns(exp, which: str, hp: ObjectiveConfig) -> evaluation.ModelFns:
  """`evaluation.ModelFns` of the student (scored against the teacher) or the teacher."""
  cfg = exp.config.eval
  mesh = exp.student_mesh if which == "student" else exp.teacher_mesh
  greedy = exp.sampler(which, greedy=True, max_new_tokens=cfg.max_new_tokens)
  sampled = exp.sampler(which, max_new_tokens=cfg.max_new_tokens)  # training temperature
  score = None
  if which == "student":
    score = lambda params, rollout: exp.score_sequences(params, batch_lib.from_rollout(rollout),
                                                        hp)
  return evaluation.ModelFns(
      prompts=lambda examples: exp.put_batch(exp.encode_prompts(examples), mesh),
      greedy=greedy, sample=sampled,
      decode=lambda rollout: batch_lib.decode_responses(exp.tokenizer, rollout),
      reward=lambda completions, examples: batch_lib.task_rewards(completions, examples)[1],
      score=score, local=processes.process_rows, shard=processes.process_shard(),
      gather=processes.stack_over_processes)


def evaluate(exp, params, which: str, hp: ObjectiveConfig) -> dict:
  """Metrics of the student or the teacher (`which`) with `params` on the test split."""
  cfg = exp.config.eval
  return evaluation.evaluate_model(model_fns(exp, which, hp), params, exp.test_examples,
                                   batch_size=cfg.batch_size, pass_k=cfg.pass_k,
                                   budget=hp.budget)


def evaluate_baselines(exp, initial_params, hp: ObjectiveConfig) -> dict:
  """The teacher and the initial student, as `eval.include_*` ask (run once, before training)."""
  results = {}
  if exp.config.eval.include_initial_student:
    results["initial_student"] = evaluate(exp, initial_params, "student", hp)
  if exp.config.eval.include_teacher:
    results["teacher"] = evaluate(exp, exp.teacher.params, "teacher", hp)
  return results


def evaluate_and_write(exp, params, step: int, hp: ObjectiveConfig, *, workdir: str) -> dict:
  """Evaluates the student, writes `eval.json` / `eval.md` under `workdir` (merged with the
  models already there; process 0 writes), and returns `eval/<model>/<metric>` scalars for
  the log (the same on every process)."""
  results = {"student": evaluate(exp, params, "student", hp)}
  evaluation.write_results(workdir, step, results)
  return evaluation.scalars(results)


def final_report(workdir: str, hp: ObjectiveConfig, *, kl_is_cost: bool) -> str:
  """The end-of-run report from `eval.json` and `metrics.jsonl`: a table of every evaluated
  model with 95% intervals over questions and one of corr(R, C) and the cost quantiles of
  right and wrong answers (returned, for the console) and `run.png` (training curves and
  before/after, `cmdp.evaluation.plots`). Called by process 0, which wrote those files."""
  import json  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top
  from cmdp.evaluation import plots, report  # pylint: disable=g-import-not-at-top
  from cmdp.training import logging as log_lib  # pylint: disable=g-import-not-at-top
  with open(os.path.join(workdir, "eval.json")) as f:
    results = json.load(f)["models"]
  png = plots.training_figure(log_lib.read_metrics(workdir), results,
                              os.path.join(workdir, "run.png"), budget=hp.budget,
                              kl_is_cost=kl_is_cost)
  questions = max((r.get("num_questions", r.get("num_examples", 0))
                   for r in results.values()), default=0)
  joint = report.reward_cost_table(results)
  steps = training_summary(log_lib.read_metrics(workdir))
  return (f"\nResults ({workdir}; budget d = {hp.budget:.4g}; {questions} distinct questions; "
          "95% intervals over questions):\n\n"
          + report.table(results) + "\n" + report.constraint_verdict(results)
          + (f"{steps}\n" if steps else "")
          + (f"\nTask reward R and cost C(y) of the same responses:\n\n{joint}\n"
             if joint else "")
          + f"Curves: {png}\n")


def training_summary(rows: list[dict]) -> str:
  """One line on what the logged steps trained on (`metrics.jsonl` rows): updates skipped
  for want of any gradient, the groups with contrast and, under dynamic sampling, the
  generation batches it took; "" without logged steps."""
  steps = [r for r in rows if "train/skipped" in r]
  if not steps:
    return ""
  n = len(steps)
  skipped = sum(r["train/skipped"] > 0 for r in steps)
  full = sum(r.get("train/groups_with_contrast", 0.0) == 1.0 for r in steps)
  line = (f"Training: {n} logged step{'s' * (n != 1)}, {skipped} skipped (no gradient: "
          f"params and optimiser state unchanged); every group had contrast in {full} of {n}")
  drawn = [r for r in steps if "train/generation_batches" in r]
  if drawn:
    batches = [r["train/generation_batches"] for r in drawn]
    kept = sum(r["train/groups_kept"] for r in drawn)
    share = float(np.mean([r["train/contrast_drawn"] for r in drawn]))
    line += (f"; dynamic sampling: {np.mean(batches):.2f} generation batches a step (at most "
             f"{max(batches):.0f}), {kept:.0f} groups kept, {share:.1%} of the groups drawn "
             "had contrast")
  return line + "."
