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
from cmdp.training.processes import process_rows, sum_over_processes


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
