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

from cmdp.evaluation import stats

QUANTILES = (0.1, 0.5, 0.9)


def _host_rollout(rollout):
  """`ModelFns.local` of a one-process run whose rollouts are host arrays already."""
  return rollout


def _one_process(tree):
  """`ModelFns.gather` of a one-process run: each leaf with a leading axis of 1."""
  return jax.tree.map(lambda x: np.asarray(x)[None], tree)


class ModelFns(NamedTuple):
  """What evaluation needs of one model, as functions (built by the trainer's layer).

  prompts: `examples -> (tokens, mask)` left-padded prompts of this process's examples,
    placed where the model runs (in a multi-process run: the global batch built from every
    process's rows).
  greedy, sample: `(params, tokens, mask, rng) -> Rollout` (sample: at the training
    temperature).
  decode: `Rollout -> list[str]` the responses' text, of a rollout from `local`.
  reward: `(completions, examples) -> correct [B]` the verifier's 0/1.
  score: `(params, Rollout) -> {"sequence_cost", "satisfied", "kl_seq"} [B]` of the run's
    constraint, for this process's rows, or None (the teacher is not scored against itself).
  local: `Rollout -> Rollout` the rows this process holds, on the host (every row with one
    process).
  shard: `(index, count)`: this process takes block `index` of `count` equal contiguous
    blocks of every batch.
  gather: a pytree of host arrays with the same shapes on every process -> each leaf
    stacked over the processes in process order, `[count, ...]`.
  """
  prompts: Callable
  greedy: Callable
  sample: Callable
  decode: Callable
  reward: Callable
  score: Callable | None
  local: Callable = _host_rollout
  shard: tuple[int, int] = (0, 1)
  gather: Callable = _one_process


def _blocks(examples: list, size: int, shard: tuple[int, int]):
  """This process's block of each batch of `size` examples (the last batch padded by
  repeating its final example): block `index` of `count` equal contiguous blocks."""
  index, count = shard
  if size % count:
    raise ValueError(f"evaluate_model: batch_size={size} does not split over {count} "
                     "processes; use a multiple of the process count.")
  rows = size // count
  for i in range(0, len(examples), size):
    chunk = examples[i:i + size]
    chunk = chunk + [chunk[-1]] * (size - len(chunk))
    yield chunk[index * rows:(index + 1) * rows]


def _real_rows(num_examples: int, size: int) -> np.ndarray:
  """`[batches, size]` bool: the rows of the padded batches that are examples, not padding."""
  batches = -(-num_examples // size)
  return np.arange(batches * size).reshape(batches, size) < num_examples


def _batch_rows(stacked: np.ndarray) -> np.ndarray:
  """`[count, batches, decodes, rows]` processes' blocks -> `[batches, decodes, count * rows]`:
  each batch's rows in order, as one process evaluating whole batches holds them."""
  return np.concatenate(list(stacked), axis=-1)


def _summary(prefix: str, rows: dict) -> dict:
  """Accuracy of the responses `rows` (`correct`, `question` and, when scored, `cost`, `kl`,
  `satisfied`: 1-D, one entry per response) and their constraint figures, with 95%
  intervals that count questions (`question`), not responses, and how reward and cost go
  together (`stats.reward_cost`)."""
  correct, question = rows["correct"], rows["question"]
  out = {f"accuracy_{prefix}": float(np.mean(correct)), f"num_{prefix}": len(correct)}
  out.update(_interval(f"accuracy_{prefix}", stats.clustered_proportion(correct, question)))
  if "cost" in rows:
    costs, kls = rows["cost"], rows["kl"]
    out.update({
        f"satisfaction_{prefix}": float(np.mean(rows["satisfied"])),
        **_interval(f"satisfaction_{prefix}",
                    stats.clustered_proportion(rows["satisfied"], question)),
        f"sequence_cost_{prefix}_mean": float(costs.mean()),
        f"kl_seq_{prefix}_mean": float(kls.mean()),
        **_interval(f"kl_seq_{prefix}_mean", stats.clustered_mean(kls, question)),
        f"kl_seq_{prefix}_std": float(kls.std(ddof=1)) if len(kls) > 1 else 0.0,
        **{f"kl_seq_{prefix}_q{int(q * 100)}": float(np.quantile(kls, q)) for q in QUANTILES},
    })
    joint = stats.reward_cost(correct, costs, QUANTILES)
    out.update({f"corr_{k}_{prefix}": joint[f"corr_{k}"] for k in ("pearson", "spearman")})
    out.update({f"sequence_cost_{prefix}_{k[len('cost_'):]}": v for k, v in joint.items()
                if k.startswith("cost_")})
  return out


def _interval(key: str, iv: stats.Interval) -> dict:
  """`{key_lo, key_hi}`: the 95% interval's ends (None where there is none)."""
  return {f"{key}_{end}": None if np.isnan(v) else float(v)
          for end, v in (("lo", iv.lo), ("hi", iv.hi))}


def _metrics(rows: dict, real: np.ndarray, pass_k: int, question: np.ndarray) -> dict:
  """The metrics of per-row figures `rows` (`{figure: [batches, 1 + pass_k, batch_size]}`,
  the greedy decode first) over the rows `real` (`[batches, batch_size]`) only; `question`
  (`[batches, batch_size]`) the id of each row's question text."""
  rows = {**rows, "question": np.broadcast_to(question[:, None], rows["correct"].shape)}
  greedy = {key: v[:, 0][real] for key, v in rows.items() if key != "length"}
  lengths = rows["length"][:, 0][real]
  out = {"accuracy": float(np.mean(greedy["correct"])),
         "response_length": float(np.mean(lengths)), "num_examples": len(lengths),
         "num_questions": len(np.unique(greedy["question"]))}
  out.update(_summary("greedy", greedy))
  if pass_k:
    sampled_real = np.broadcast_to(real[:, None], rows["correct"][:, 1:].shape)
    sampled = {key: v[:, 1:][sampled_real] for key, v in rows.items() if key != "length"}
    out.update(_summary("sampled", sampled))
    out[f"pass@{pass_k}"] = float(np.mean((rows["correct"][:, 1:] > 0).any(axis=1)[real]))
  return out


def evaluate_model(fns: ModelFns, params, examples: list, *, batch_size: int, pass_k: int,
                   budget: float | None = None, other_budgets: dict | None = None) -> dict:
  """Metrics of one model with `params` on `examples`.

  Greedy decodes, and `pass_k` samples per prompt at the training temperature (the
  distribution training enforces the constraint on): accuracy of each, pass@k, and when
  `fns.score` is given the constraint `C(y) <= d` (its `satisfied`) on each, with the
  KL(student||teacher) per sequence; `num_greedy` / `num_sampled` count the responses
  behind each figure.

  Examples go in batches of `batch_size`, the last padded; padding rows are left out of
  every figure. In a multi-process run (`fns.shard`) each process decodes, verifies and
  scores its own block of every batch, and the per-response figures of all processes are
  gathered (`fns.gather`), so every process gets the metrics of one process evaluating
  whole batches. `other_budgets` (`{name: d}`) adds `satisfaction_<kind>@<name>`, the
  share of the same responses with `C(y) <= d` (`C` does not depend on `d`).
  """
  if not examples:
    raise ValueError("evaluate_model: no examples to evaluate.")

  def figures(rollout, block) -> dict:
    """Per-row figures of this process's rows of one decode."""
    local = fns.local(rollout)
    out = {"correct": np.asarray(fns.reward(fns.decode(local), block)),
           "length": np.asarray(local.lengths)}
    if fns.score is not None:
      scores = fns.score(params, rollout)
      out.update(cost=np.asarray(scores["sequence_cost"]), kl=np.asarray(scores["kl_seq"]),
                 satisfied=np.asarray(scores["satisfied"]))
    return out

  per_batch = []  # per batch: {figure: [1 + pass_k, rows]}, greedy first
  for step, block in enumerate(_blocks(examples, batch_size, fns.shard)):
    tokens, mask = fns.prompts(block)
    decodes = [figures(fns.greedy(params, tokens, mask, jax.random.PRNGKey(step)), block)]
    for k in range(pass_k):
      r = fns.sample(params, tokens, mask, jax.random.PRNGKey(10_000 * (k + 1) + step))
      decodes.append(figures(r, block))
    per_batch.append({key: np.stack([d[key] for d in decodes]) for key in decodes[0]})
  local = {key: np.stack([b[key] for b in per_batch]) for key in per_batch[0]}
  rows = {key: _batch_rows(v) for key, v in fns.gather(local).items()}
  real = _real_rows(len(examples), batch_size)
  ids = {}
  question = np.asarray([ids.setdefault(ex.question, len(ids)) for ex in examples])
  out = _metrics(rows, real, pass_k,
                 question[np.minimum(np.arange(real.size), len(examples) - 1)].reshape(
                     real.shape))
  if fns.score is not None and budget is not None:
    out["budget"] = float(budget)
  for name, d in (other_budgets or {}).items() if fns.score is not None else ():
    out[f"satisfaction_greedy@{name}"] = float(np.mean(rows["cost"][:, 0][real] <= d))
    if pass_k:
      sampled = rows["cost"][:, 1:][np.broadcast_to(real[:, None], rows["cost"][:, 1:].shape)]
      out[f"satisfaction_sampled@{name}"] = float(np.mean(sampled <= d))
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
