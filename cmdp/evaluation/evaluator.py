"""Evaluation: accuracy, pass@k, constraint satisfaction and the KL to the teacher.

For a model (the student, the teacher, or the initial student) on the test examples, on
greedy decodes and on `eval.pass_k` samples per prompt at the training temperature:
accuracy, pass@k, and for the student, scored by the teacher on the student's own
prefixes, the satisfaction of the run's constraint at the budget, the sequence cost and
the sequence KL(student || teacher) (mean and quantiles), each with its count.
"""
from __future__ import annotations

import json
import os

import jax
import numpy as np

from cmdp.objectives import ObjectiveConfig
from cmdp.training import batch as batch_lib

QUANTILES = (0.1, 0.5, 0.9)


def _batches(examples: list, size: int):
  """Fixed-size chunks (the last one padded by repeating its final example) and real counts."""
  for i in range(0, len(examples), size):
    chunk = examples[i:i + size]
    yield chunk + [chunk[-1]] * (size - len(chunk)), len(chunk)


def _summary(prefix: str, correct, costs, kls, satisfied, hp: ObjectiveConfig) -> dict:
  out = {f"accuracy_{prefix}": float(np.mean(correct)), f"num_{prefix}": len(correct)}
  if len(costs):
    costs, kls = np.asarray(costs), np.asarray(kls)
    out.update({
        f"satisfaction_{prefix}": float(np.mean(satisfied)),
        f"sequence_cost_{prefix}_mean": float(costs.mean()),
        f"kl_seq_{prefix}_mean": float(kls.mean()),
        **{f"kl_seq_{prefix}_q{int(q * 100)}": float(np.quantile(kls, q)) for q in QUANTILES},
    })
  return out


def evaluate_model(exp, params, which: str = "student", hp: ObjectiveConfig | None = None,
                   examples: list | None = None) -> dict:
  """Metrics of one model (`which` = "student" or "teacher") with `params`.

  Greedy decodes, and `eval.pass_k` samples per prompt at the training temperature (the
  distribution training enforces the constraint on): accuracy of each, pass@k, and for
  the student the constraint `C(y) <= d` of `hp` (cmdp.objectives.sequence_scores) on
  each, with the KL(student||teacher) per sequence; `num_greedy` / `num_sampled` count
  the responses behind each figure.
  """
  cfg = exp.config.eval
  hp = hp or exp.hp
  examples = examples or exp.test_examples
  mesh = exp.student_mesh if which == "student" else exp.teacher_mesh
  greedy = exp.sampler(which, greedy=True, max_new_tokens=cfg.max_new_tokens)
  sampled = exp.sampler(which, max_new_tokens=cfg.max_new_tokens)  # training temperature
  acc = {"greedy": dict(correct=[], costs=[], kls=[], satisfied=[]),
         "sampled": dict(correct=[], costs=[], kls=[], satisfied=[])}
  passed, lengths = [], []

  def record(kind, rollout, chunk, n):
    _, ok = batch_lib.task_rewards(batch_lib.decode_responses(exp.tokenizer, rollout), chunk)
    a = acc[kind]
    a["correct"].extend(ok[:n])
    if which == "student":
      scores = exp.score_sequences(params, batch_lib.from_rollout(rollout), hp)
      a["costs"].extend(scores["sequence_cost"][:n])
      a["kls"].extend(scores["kl_seq"][:n])
      a["satisfied"].extend(scores["satisfied"][:n])
    return ok

  for step, (chunk, n) in enumerate(_batches(examples, cfg.batch_size)):
    prompts = exp.put_batch(exp.encode_prompts(chunk), mesh)
    rollout = greedy(params, *prompts, jax.random.PRNGKey(step))
    record("greedy", rollout, chunk, n)
    lengths.extend(np.asarray(rollout.lengths)[:n])
    any_ok = np.zeros(len(chunk), bool)
    for k in range(cfg.pass_k):
      r = sampled(params, *prompts, jax.random.PRNGKey(10_000 * (k + 1) + step))
      any_ok |= record("sampled", r, chunk, n) > 0
    passed.extend(any_ok[:n])

  out = {"accuracy": float(np.mean(acc["greedy"]["correct"])),
         "response_length": float(np.mean(lengths)), "num_examples": len(lengths)}
  out.update(_summary("greedy", **acc["greedy"], hp=hp))
  if cfg.pass_k:
    out.update(_summary("sampled", **acc["sampled"], hp=hp))
    out[f"pass@{cfg.pass_k}"] = float(np.mean(passed))
  if which == "student":
    out["budget"] = float(hp.budget)
  return out


def markdown_table(results: dict) -> str:
  """A short markdown table: one row per evaluated model."""
  cols = sorted({k for r in results.values() for k in r})
  lines = ["| model | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
  for name, r in results.items():
    cells = [f"{r[c]:.4g}" if isinstance(r.get(c), float) else str(r.get(c, "")) for c in cols]
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def write_results(workdir: str, step: int, results: dict) -> None:
  """`DIR/eval.json` (all models, keyed by name) and `DIR/eval.md`."""
  if jax.process_index() != 0:
    return
  path = os.path.join(workdir, "eval.json")
  previous = {}
  if os.path.exists(path):
    with open(path) as f:
      previous = json.load(f).get("models", {})
  merged = {**previous, **results}
  with open(path, "w") as f:
    json.dump({"step": step, "models": merged}, f, indent=2)
  with open(os.path.join(workdir, "eval.md"), "w") as f:
    f.write(f"Evaluation at step {step}\n\n" + markdown_table(merged))


def evaluate_baselines(exp, initial_params, hp: ObjectiveConfig | None = None) -> dict:
  """The teacher and the initial student, as `eval.include_*` ask (run once, before training)."""
  results = {}
  if exp.config.eval.include_initial_student:
    results["initial_student"] = evaluate_model(exp, initial_params, "student", hp)
  if exp.config.eval.include_teacher:
    results["teacher"] = evaluate_model(exp, exp.teacher.params, "teacher", hp)
  return results


def evaluate_and_write(exp, params, step: int, hp: ObjectiveConfig | None = None,
                       extra: dict | None = None) -> dict:
  """Evaluates the student, writes `eval.json` / `eval.md` (with `extra` models, e.g. the
  baselines) under `exp.workdir`, and returns `eval/<model>/<metric>` scalars for the log."""
  results = {**(extra or {}), "student": evaluate_model(exp, params, "student", hp)}
  write_results(exp.workdir, step, results)
  return {f"eval/{m}/{k}": v for m, r in results.items() for k, v in r.items()
          if isinstance(v, (int, float))}
