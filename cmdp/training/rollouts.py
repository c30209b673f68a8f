"""One step's training batch: the prompts, the rollouts (or reference sequences), the
task rewards; with dynamic sampling, only prompt groups that carry a gradient.

`make_batch` builds a batch from a list of prompts. `next_batch` is what the training loop
calls: the next prompts of the iterator, and under `config.dynamic_sampling` the generation
batches sampled and filtered until the step's batch holds only groups with contrast
(docs/method.md, "Dynamic sampling").
"""
from __future__ import annotations

import jax
import numpy as np

from cmdp import data
from cmdp.training import batch as batch_lib
from cmdp.training import experiment as experiment_lib
from cmdp.training import programs
from cmdp.training.processes import process_rows, rows_over_processes, sum_over_processes


def make_batch(exp: experiment_lib.Experiment, params, examples: list, rng, on_policy: bool,
               group_size: int | None = None):
  """Builds one step's batch on the student's mesh; returns `(batch, host_metrics)`.

  `group_size`: responses per prompt (default `rollout.group_size`; the budget's
  calibration samples its own count).

  `examples` are this process's prompts (`PromptIterator(shard=...)`): every prompt of the
  step in a one-process run. The verifier scores this process's rows on its host; the
  host metrics cover every process's rows.
  """
  cfg = exp.config
  g = group_size or exp.hp.group_size
  group = [ex for ex in examples for _ in range(g)]
  if on_policy or cfg.rollout.sft_source == "teacher":
    prompts = exp.encode_prompts(examples)  # host, each prompt once
    batch_lib.check_prompts(*prompts, cfg.data.max_prompt_len, exp.shared_prefix)
    who = "student" if on_policy else "teacher"
    model = exp.student if on_policy else exp.teacher
    mesh = exp.student_mesh if on_policy else exp.teacher_mesh
    # Repeated group_size times inside the sampler; on-policy, the student being trained
    # (`params`), never the initial one.
    rollout = exp.sampler(who, group_size=g)(params if on_policy else model.params,
                                             *exp.put_prompts(prompts, mesh), rng, check=False)
    sequences = (rollout.tokens, rollout.attention_mask, rollout.response_mask)
    if on_policy:
      batch = exp.shift_batch(*sequences, rollout.logprobs)
    else:  # teacher samples are supervised targets: no sampler log-probs
      batch = exp.shift_batch(*exp.put_batch(sequences))
    # To the host: what the verifier reads (the response tokens), nothing else.
    local = process_rows(rollout._replace(attention_mask=None, logprobs=None, lengths=None,
                                          finished=None))
    completions = batch_lib.decode_responses(exp.tokenizer, local)
    new_tokens = int(np.asarray(local.response_mask).sum())
  else:
    seqs = [data.encode_sft(exp.tokenizer, exp.prompt_text(ex.question),
                            ex.solution or f"#### {ex.answer}", cfg.data.sft_max_len)
            for ex in group]
    tokens, attn, loss_mask = (np.stack(x) for x in zip(*seqs))
    if (tokens[:, :exp.shared_prefix] != np.asarray(exp.prompt_prefix, np.int32)).any():
      raise ValueError("A reference sequence does not begin with the prompts' shared prefix; "
                       "set config.data.share_prompt_prefix=False.")
    batch = exp.shift_batch(*exp.put_batch((tokens, attn, loss_mask)))
    completions = [ex.solution or f"#### {ex.answer}" for ex in group]
    new_tokens = int(loss_mask.sum())
  task_reward, correct = batch_lib.task_rewards(completions, group, cfg.format_reward_weight)
  batch["task_reward"] = exp.put_batch(task_reward)
  # The teacher scores every batch inside the train step, microbatch by microbatch (a
  # teacher on its own devices too: the step hands its logits over per microbatch).
  tokens, right, rows = sum_over_processes(
      np.asarray([new_tokens, correct.sum(), len(correct)], np.float64))
  host = {"new_tokens": int(tokens)}
  if on_policy:  # the student's own accuracy; off-policy rows are reference text
    host["accuracy"] = float(right / rows)
  return batch, host


def draw_prompts(config) -> int:
  """Prompts the training iterator serves per draw: a generation batch's under dynamic
  sampling, else the step's."""
  ds = config.dynamic_sampling
  step_prompts = config.batch_size // config.rollout.group_size
  return (ds.generation_prompts or step_prompts) if ds.enabled else step_prompts


def next_batch(exp: experiment_lib.Experiment, state, it: data.PromptIterator, step: int,
               on_policy: bool) -> tuple[dict, dict]:
  """The batch of training step `step`: `(batch, host_metrics)`.

  Without dynamic sampling (or off policy), `make_batch` of the iterator's next prompts,
  with the key `fold_in(state.rng, step)`. Under `config.dynamic_sampling`, generation
  batches of `generation_prompts` prompts (generation batch k sampled with key
  `fold_in(key, k)` for k >= 1, the step's own key for k = 0) are drawn from the iterator,
  rolled out and scored by `Experiment.row_signal` until the step's prompts are filled with
  groups with contrast (at least one row whose logits get a nonzero gradient), kept in
  draw order; the surplus of the last generation batch is dropped. At
  `max_generation_batches` without a full batch: `at_cap="proceed"` fills the rest with
  the first groups without contrast in draw order (they add nothing to the update),
  `"error"` raises. The step's batch keeps its shape, and the data order is a function of
  the seed and the iterator's position, so a resumed run repeats an uninterrupted one.

  In a multi-process run each process fills its own share of the step's groups from its
  own rows, and every process samples until all are full (the sampler is one program over
  the mesh).

  With `Experiment.keeps_teacher_logits` the signal pass also returns each generation
  batch's teacher logits, and the step's batch brings the kept rows' as `teacher_logits`,
  gathered on the devices (`programs.gather_rows`): the step runs no teacher forward.
  """
  cfg = exp.config
  ds = cfg.dynamic_sampling
  rng = jax.random.fold_in(state.rng, step)
  if not (ds.enabled and on_policy):
    return make_batch(exp, state.params, it.next_batch(), rng, on_policy)
  g = exp.hp.group_size
  need = cfg.batch_size // g // jax.process_count()  # this process's groups
  keep_logits = exp.keeps_teacher_logits
  kept, spare, pools = [], [], []  # (pool, group) pairs; the generation batches' rows
  logits = []  # with keep_teacher_logits: each generation batch's, on the devices
  tokens = right = rows = 0
  draws = 0
  while draws < ds.max_generation_batches:
    key = rng if draws == 0 else jax.random.fold_in(rng, draws)
    batch, host = make_batch(exp, state.params, it.next_batch(), key, True)
    signal = exp.row_signal(state.params, batch, state.objective_state, keep_logits)
    if keep_logits:
      signal, teacher = signal
      logits.append(teacher)
    local = process_rows(batch)
    pools.append(local)
    contrast = signal.reshape(-1, g).any(axis=-1)
    for i, c in enumerate(contrast):
      (kept if c else spare).append((draws, i))
    n = len(local["mask"])
    tokens += host["new_tokens"]
    right += host["accuracy"] * n * jax.process_count()
    rows += n * jax.process_count()
    draws += 1
    short = sum_over_processes(np.asarray([max(need - len(kept), 0)], np.float64))[0]
    if short == 0:
      break
  counts = np.asarray([min(len(kept), need), len(kept), len(kept) + len(spare)], np.float64)
  kept_groups, contrast_drawn, drawn = sum_over_processes(counts)
  if kept_groups < cfg.batch_size // g:
    if ds.at_cap == "error":  # every process sees the global count: all raise
      raise RuntimeError(
          f"dynamic_sampling: at step {step}, {int(kept_groups)} of the step's "
          f"{cfg.batch_size // g} prompt groups had contrast after max_generation_batches="
          f"{ds.max_generation_batches} generation batches; raise max_generation_batches or "
          "generation_prompts, or set dynamic_sampling.at_cap='proceed'.")
    kept = kept + spare[:max(need - len(kept), 0)]
  step_batch = {k: np.concatenate([pools[p][k][i * g:(i + 1) * g] for p, i in kept[:need]])
                for k in pools[0]}
  host = {"new_tokens": int(tokens), "accuracy": float(right / rows),
          "generation_batches": float(draws), "groups_kept": float(kept_groups),
          "contrast_drawn": float(contrast_drawn / drawn)}
  step_batch = exp.put_batch(step_batch)
  if keep_logits:
    rows_of = kept_rows(kept[:need], g, len(pools[0]["mask"]))
    step_batch["teacher_logits"] = programs.gather_rows(exp.student_mesh)(tuple(logits),
                                                                          rows_of)
  return step_batch, host


def kept_rows(kept: list, group_size: int, local_rows: int) -> np.ndarray:
  """The step's rows as indices into the generation batches' global rows, concatenated:
  `[batch_size]` int32, every process's in process order (`kept`: this process's
  `(generation batch, group)` pairs, its `local_rows` rows a generation batch)."""
  total = local_rows * jax.process_count()
  first = jax.process_index() * local_rows
  local = np.concatenate([pool * total + first + i * group_size + np.arange(group_size)
                          for pool, i in kept]).astype(np.int32)
  return rows_over_processes(local)
