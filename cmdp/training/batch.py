"""Turns rollouts and supervised sequences into the batch contract of `cmdp.objectives`.

All fields are aligned per target position: the model reads `inputs[:, t]` and is scored
on `targets[:, t] = tokens[:, t + 1]`.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from cmdp import rewards
from cmdp import rollout as rollout_lib
from cmdp.rollout import Rollout


def shift(tokens, attention_mask, action_mask, logprobs=None) -> dict:
  """`[B, T]` sequences -> `[B, T-1]` inputs / targets / masks (logprobs of the targets)."""
  batch = {
      "inputs": tokens[:, :-1].astype(jnp.int32),
      "targets": tokens[:, 1:].astype(jnp.int32),
      "input_mask": attention_mask[:, :-1].astype(bool),
      "mask": action_mask[:, 1:].astype(jnp.float32),
  }
  old = jnp.zeros(batch["mask"].shape, jnp.float32) if logprobs is None else logprobs[:, 1:]
  batch["old_logprobs"] = old.astype(jnp.float32)
  return batch


def from_rollout(rollout: Rollout) -> dict:
  """The model-side fields of a training batch from a student rollout."""
  return shift(rollout.tokens, rollout.attention_mask, rollout.response_mask, rollout.logprobs)


def decode_responses(tokenizer, rollout: Rollout) -> list[str]:
  """The generated text of each row (stop and pad tokens dropped)."""
  tokens = np.asarray(rollout.tokens)
  resp = np.asarray(rollout.response_mask)
  return tokenizer.batch_decode([t[m].tolist() for t, m in zip(tokens, resp)],
                                skip_special_tokens=True)


def check_prompts(prompts: np.ndarray, prompt_mask: np.ndarray, max_prompt_len: int,
                  shared_prefix: int = 0) -> None:
  """Raises ValueError unless host prompts are `[n, max_prompt_len]`, left padded (after
  `shared_prefix` columns the same in every row), with a real token in every row: the
  sampler's contract, checked once on the host before the prompts go to the devices (so
  the sampler need not read them back)."""
  if np.ndim(prompts) != 2 or np.shape(prompts)[1] != max_prompt_len:
    raise ValueError(f"prompts {np.shape(prompts)} must be [n, max_prompt_len={max_prompt_len}] "
                     "(cmdp.data.encode_prompts pads them to it).")
  rollout_lib.check_prompts(prompts, prompt_mask, shared_prefix)


def repeat_rows(x, n: int):
  """Repeats each row `n` times, keeping copies adjacent (one group per prompt)."""
  return jax.tree.map(lambda a: np.repeat(np.asarray(a), n, axis=0), x)


def task_rewards(completions: list[str], examples: list, format_weight: float = 0.0):
  """`(task_reward [B], correct [B])`: the verifier's 0/1 plus `format_weight` times the
  format reward (a well-formed final `#### n` line)."""
  correct = np.asarray(rewards.score_completions(completions, examples), np.float32)
  if not format_weight:
    return correct, correct
  fmt = np.asarray([rewards.format_reward(c) for c in completions], np.float32)
  return correct + format_weight * fmt, correct
