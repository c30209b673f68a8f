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

from typing import Callable, NamedTuple

QUANTILES = (0.1, 0.5, 0.9)


class ModelFns(NamedTuple):
  """What evaluation needs of one model, as functions (built by the trainer's layer).

  prompts: `examples -> (tokens, mask)` left-padded prompts, placed where the model runs.
  greedy, sample: `(params, tokens, mask, rng) -> Rollout` (sample: at the training
    temperature).
  decode: `Rollout -> list[str]` the responses' text.
  reward: `(completions, examples) -> correct [B]` the verifier's 0/1.
  score: `(params, Rollout) -> {"sequence_cost", "satisfied", "kl_seq"} [B]` of the run's
    constraint, or None (the teacher is not scored against itself).
  """
  prompts: Callable
  greedy: Callable
  sample: Callable
  decode: Callable
  reward: Callable
  score: Callable | None


def _batches(examples: list, size: int):
  """Fixed-size chunks (the last one padded by repeating its final example) and real counts."""
  for i in range(0, len(examples), size):
    chunk = examples[i:i + size]
    yield chunk + [chunk[-1]] * (size - len(chunk)), len(chunk)


def _summary(prefix: str, correct, costs, kls, satisfied) -> dict:
  out = {f"accuracy_{prefix}": float(np.mean(correct)), f"num_{prefix}": len(correct)}
  if len(costs):
    costs, kls = np.asarray(costs), np.asarray(kls)
    out.update({
        f"satisfaction_{prefix}": float(np.mean(satisfied)),
        f"sequence_cost_{prefix}_mean": float(costs.mean()),
        f"kl_seq_{prefix}_mean": float(kls.mean()),
        f"kl_seq_{prefix}_std": float(kls.std(ddof=1)) if len(kls) > 1 else 0.0,
        **{f"kl_seq_{prefix}_q{int(q * 100)}": float(np.quantile(kls, q)) for q in QUANTILES},
    })
  return out


def evaluate_model(fns: ModelFns, params, examples: list, *, batch_size: int, pass_k: int,
                   budget: float | None = None) -> dict:
  """Metrics of one model with `params` on `examples`.

  Greedy decodes, and `pass_k` samples per prompt at the training temperature (the
  distribution training enforces the constraint on): accuracy of each, pass@k, and when
  `fns.score` is given the constraint `C(y) <= d` (its `satisfied`) on each, with the
  KL(student||teacher) per sequence; `num_greedy` / `num_sampled` count the responses
  behind each figure.
  """
  acc = {"greedy": dict(correct=[], costs=[], kls=[], satisfied=[]),
         "sampled": dict(correct=[], costs=[], kls=[], satisfied=[])}
  passed, lengths = [], []

  def record(kind, rollout, chunk, n):
    ok = np.asarray(fns.reward(fns.decode(rollout), chunk))
    a = acc[kind]
    a["correct"].extend(ok[:n])
    if fns.score is not None:
      scores = fns.score(params, rollout)
      a["costs"].extend(scores["sequence_cost"][:n])
      a["kls"].extend(scores["kl_seq"][:n])
      a["satisfied"].extend(scores["satisfied"][:n])
    return ok

  for step, (chunk, n) in enumerate(_batches(examples, batch_size)):
    tokens, mask = fns.prompts(chunk)
    rollout = fns.greedy(params, tokens, mask, jax.random.PRNGKey(step))
    record("greedy", rollout, chunk, n)
    lengths.extend(np.asarray(rollout.lengths)[:n])
    any_ok = np.zeros(len(chunk), bool)
    for k in range(pass_k):
      r = fns.sample(params, tokens, mask, jax.random.PRNGKey(10_000 * (k + 1) + step))
      any_ok |= record("sampled", r, chunk, n) > 0
    passed.extend(any_ok[:n])

  out = {"accuracy": float(np.mean(acc["greedy"]["correct"])),
         "response_length": float(np.mean(lengths)), "num_examples": len(lengths)}
  out.update(_summary("greedy", **acc["greedy"]))
  if pass_k:
    out.update(_summary("sampled", **acc["sampled"]))
    out[f"pass@{pass_k}"] = float(np.mean(passed))
  if fns.score is not None and budget is not None:
    out["budget"] = float(budget)
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


def scalars(results: dict) -> dict:
  """`eval/<model>/<metric>` scalars of `{model: metrics}` for the metric log."""
  return {f"eval/{m}/{k}": v for m, r in results.items() for k, v in r.items()
          if isinstance(v, (int, float))}
