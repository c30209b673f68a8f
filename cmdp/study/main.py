"""The study: cached pretraining, one budget calibration, methods x seeds, the report.

    python -m cmdp.study --config configs/study_arith.py --workdir DIR

Everything lands in DIR (pretrained models, `calibration.json`, one directory per run with
its `result.json`); the report (`<name>.md`, `<name>.png`, `<name>.json`) goes to
`study.output_dir` ("" = DIR/results). Re-running skips what is finished.
"""
from __future__ import annotations

import json
import math
import os
import platform
import time

import ml_collections
import tqdm

from cmdp import data
from cmdp.evaluation.stats import wilson_interval
from cmdp.study import evaluate as eval_lib
from cmdp.study import plot as plot_lib
from cmdp.study import pretrain, report, runner, stats
from cmdp.training.config import set_objective

REPORT_METRICS = tuple(k for k, _, _ in report.TABLE_COLUMNS) + (
    "accuracy_sampled_mul", "accuracy_sampled_nomul", "response_length")
_EVAL_FORMAT = 2  # bumped when the cached pretrain/eval.json's metrics change


def test_examples(study: ml_collections.ConfigDict) -> list:
  """The held-out problems every model is evaluated on (fixed across seeds and methods)."""
  return data.load_task("arith", split="test", size=study.eval.num_examples,
                        seed=study.eval.data_seed, **study.task.to_dict())


def evaluate_pretrained(study, workdir: str, examples: list, budget: float) -> dict:
  """Teacher and initial-student metrics on `examples` (cached in DIR/pretrain/eval.json)."""
  from cmdp.training import experiment  # pylint: disable=g-import-not-at-top
  path = os.path.join(workdir, "pretrain", "eval.json")
  if os.path.exists(path):
    with open(path) as f:
      cached = json.load(f)
    if (cached.get("budget") == budget and cached.get("num_examples") == len(examples)
        and cached.get("format") == _EVAL_FORMAT):
      return cached
  c = runner.base_run_config(study, workdir)
  set_objective(c, "cmdp")  # only the constraint is read: the student is scored, not trained
  c.lock()
  exp = experiment.build(c)
  hp = eval_lib.study_hp(exp.hp, study.run.loss.cost, study.run.loss.constraint, budget)
  kw = dict(batch_size=study.eval.batch_size, pass_k=study.eval.pass_k)
  out = {"budget": budget, "num_examples": len(examples), "format": _EVAL_FORMAT,
         "teacher": eval_lib.evaluate(exp, exp.teacher.params, "teacher", hp, examples, **kw),
         "student": eval_lib.evaluate(exp, exp.student.params, "student", hp, examples, **kw)}
  with open(path, "w") as f:
    json.dump(out, f, indent=2)
  return out


def enable_compilation_cache(path: str) -> None:
  """JAX's persistent compilation cache: seed i > 0 reuses seed 0's compiled steps."""
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)


def machine() -> str:
  import jax  # pylint: disable=g-import-not-at-top
  return (f"{platform.machine()} {platform.processor() or ''} with {os.cpu_count()} CPU "
          f"cores visible, JAX {jax.__version__} on {jax.devices()[0].platform}").replace("  ", " ")


def pretrain_text(study, info: dict, pre_eval: dict) -> str:
  lines = ["| model | parameters | SFT steps | stage wall time | greedy accuracy (95% Wilson CI) "
           "| with x | without x |", "|---|---|---|---|---|---|---|"]
  for role, name in (("teacher", "teacher"), ("student", "initial student")):
    ev = pre_eval[role]
    n = ev["num_examples"]
    iv = wilson_interval(round(ev["num_correct_greedy"]), n)
    lines.append(
        f"| {name} | {info[role]['num_params']:,} | {study.pretrain[role].steps} | "
        f"{info[role]['wall_s'] / 60:.1f} min | {100 * iv.mean:.1f}% "
        f"[{100 * iv.lo:.1f}, {100 * iv.hi:.1f}] (n={n}) | "
        f"{100 * ev.get('accuracy_greedy_mul', float('nan')):.1f}% | "
        f"{100 * ev.get('accuracy_greedy_nomul', float('nan')):.1f}% |")
  s = pre_eval["student"]
  t = pre_eval["teacher"]
  lines += ["", f"Sampled at the training temperature: teacher accuracy "
            f"{100 * t['accuracy_sampled']:.1f}%; initial student accuracy "
            f"{100 * s['accuracy_sampled']:.1f}%, satisfaction at d "
            f"{100 * s['satisfaction_sampled']:.1f}%, mean KL {s['kl_seq_sampled_mean']:.2f} "
            f"nats (median {s['kl_seq_sampled_q50']:.2f}); greedy: satisfaction "
            f"{100 * s['satisfaction_greedy']:.1f}%, mean KL {s['kl_seq_greedy_mean']:.2f}."]
  return "\n".join(lines)


def setting_text(study, methods: list[dict]) -> str:
  r = study.run
  method_lines = "\n".join(
      f"* `{m['name']}`: objective `{m['objective']}`"
      + (f", loss {m.get('loss')}" if m.get("loss") else "")
      + (f", budget {m['budget_scale']} d" if m.get("budget_scale", 1.0) != 1.0 else "")
      for m in methods)
  return (f"{study.description}\n\nTask `arith` with {study.task.to_dict()}; the teacher's "
          f"training data adds {study.pretrain.teacher.task_overrides.to_dict()}, the "
          f"student's {study.pretrain.student.task_overrides.to_dict()}. Every run: "
          f"{r.num_steps} optimiser steps of {r.batch_size} sequences ({r.batch_size // r.loss.group_size}"
          f" prompts x {r.loss.group_size} samples), at most {r.rollout.max_new_tokens} new "
          f"tokens, rollout temperature {r.rollout.temperature}, {r.optimizer.name} at "
          f"learning rate {r.optimizer.learning_rate}; {study.seeds} seeds (seed i of every "
          f"method shares the initial student and the data order). Evaluation on "
          f"{study.eval.num_examples} held-out problems, greedy and {study.eval.pass_k} "
          f"sample(s) per problem at the rollout temperature, at most "
          f"{study.eval.max_new_tokens} new tokens.\n\n"
          + (f"{study.settings_note}\n\n" if study.get("settings_note") else "")
          + f"Methods:\n\n{method_lines}")


def compute_text(info: dict, setup_s: float, run_wall: float, num_runs: int) -> str:
  """The study's compute from scratch, stage by stage (each measured when it ran)."""
  pre = sum(info[role]["wall_s"] for role in pretrain.ROLES)
  recorded = not math.isnan(setup_s)
  parts = [f"supervised stage {pre / 60:.1f} min",
           "budget calibration and first evaluation "
           + (f"{setup_s / 60:.1f} min" if recorded else "(not recorded)"),
           f"{num_runs} runs {run_wall / 60:.1f} min (training and evaluation, summed)"]
  total = pre + run_wall + (setup_s if recorded else 0.0)
  return (f" The study's compute from scratch: {'; '.join(parts)}; {total / 60:.1f} min in "
          "all (each part measured when it ran, earlier invocations included).")


def run_study(study: ml_collections.ConfigDict, workdir: str, command: str) -> dict:
  """Runs (or resumes) the whole study; returns the JSON payload it writes."""
  t0 = time.perf_counter()
  os.makedirs(workdir, exist_ok=True)
  if study.compilation_cache:
    enable_compilation_cache(os.path.join(workdir, "jax_cache"))
  methods = runner.method_list(study)
  info = {role: pretrain.run_stage(study, workdir, role) for role in pretrain.ROLES}
  t_setup = time.perf_counter()
  setup_path = os.path.join(workdir, "setup_s.txt")  # calibration + first evaluation
  first = not os.path.exists(os.path.join(workdir, "calibration.json"))
  budgets = runner.calibrate_budgets(study, workdir, methods)
  d = budgets[(study.run.loss.cost, study.run.loss.constraint)]
  examples = test_examples(study)
  pre_eval = evaluate_pretrained(study, workdir, examples, d)
  if first:
    with open(setup_path, "w") as f:
      f.write(f"{time.perf_counter() - t_setup:.1f}\n")
  setup_s = float(open(setup_path).read()) if os.path.exists(setup_path) else float("nan")

  per_seed, raw = {}, []
  jobs = [(m, s) for s in range(study.seeds) for m in methods]
  for m, s in tqdm.tqdm(jobs, desc="study runs", unit="run", dynamic_ncols=True):
    result = runner.run_one(study, workdir, m, s, budgets, examples)
    per_seed.setdefault(m["name"], {})[s] = result["metrics"]
    raw.append(result)

  summary = stats.summarize(per_seed, REPORT_METRICS)
  diffs = stats.paired_differences(per_seed, study.report.reference, REPORT_METRICS)
  out_dir = study.output_dir or os.path.join(workdir, "results")
  os.makedirs(out_dir, exist_ok=True)
  name = study.name
  frontiers = {k: list(v) for k, v in study.report.frontiers.to_dict().items()}
  plot_lib.plot(summary, frontiers, d, os.path.join(out_dir, f"{name}.png"),
                initial=pre_eval["student"], teacher_accuracy=pre_eval["teacher"].get(
                    "accuracy_greedy"))
  run_wall = sum(r["wall_s"] for r in raw)
  budget_text = ("Budgets, calibrated once on the initial student (the "
                 f"{study.calibration.quantile:g} quantile of its per-sequence cost on "
                 f"{study.calibration.prompts} sampled training prompts x group): "
                 + "; ".join(f"{c}/{k}: d = {v:.4g}" for (c, k), v in budgets.items())
                 + ". Satisfaction is reported for every method at the study's d on the "
                 "sequence reverse KL.")
  verdict_text = report.verdict(summary, diffs, study.report.reference,
                                list(study.report.soft_methods), study.report.gkd_grpo)
  md = report.markdown_report(
      title=study.title, setting=setting_text(study, methods), command=command,
      wall_time_s=time.perf_counter() - t0, machine=machine(),
      budget_text=budget_text + compute_text(info, setup_s, run_wall, len(raw)),
      pretrain_text=pretrain_text(study, info, pre_eval), summary=summary, diffs=diffs,
      reference=study.report.reference, verdict_text=verdict_text, figure=f"{name}.png",
      tension=report.tension_text(
          summary, d, initial=pre_eval["student"],
          distill_minus_rl=(stats.paired_differences(per_seed, "grpo", REPORT_METRICS)
                            .get("gkd") if "grpo" in per_seed else None)))
  with open(os.path.join(out_dir, f"{name}.md"), "w") as f:
    f.write(md)
  payload = {"budgets": {f"{c}/{k}": v for (c, k), v in budgets.items()}, "budget": d,
             "pretrain": {"info": info, "eval": pre_eval}, "methods": methods,
             "per_seed": per_seed, "runs": raw, "summary": summary, "paired_vs_reference": diffs,
             "reference": study.report.reference, "command": command,
             "wall_time_s": time.perf_counter() - t0, "machine": machine(),
             "config": json.loads(study.to_json_best_effort())}
  report.write_json(os.path.join(out_dir, f"{name}.json"), payload)
  return payload
