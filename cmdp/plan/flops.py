"""The models' own matmul FLOPs of one training step: a hand count to hold the planner's
compiled FLOPs against.

Per token of one forward pass through a decoder (`cmdp.models.ModelConfig` c) that attends
over `context` positions:

    2 x (D x (H + 2 KVH) x hd + H x hd x D + 3 x D x F) per layer   projections and SwiGLU
    2 x 2 x H x hd x context per layer                               scores and values
    2 x D x V                                                        the head, where logits
                                                                     are computed

Attention is counted over every position the code multiplies (the whole padded window,
masked entries included: the training forward computes `[T, T]` scores, the decode step
scores every cache slot). A step (`abstract.rollout_model`'s rollout, then the update):

  * rollout: the prefill of the prompts (logits of the last position only), and N - 1
    one-token decode steps over the P + N - 1 cache slots;
  * update: the student's forward and backward (3 x its forward: the backward is two
    matmuls per forward one), and the teacher's forward, over every sequence (L = P + N - 1
    positions, logits over the response window), plus one more student forward when the
    step first recomputes the trainer's log-probabilities (`tis_cap` or minibatches).

Full rematerialisation (`remat`) is not counted: it adds a forward, a third of the
student's update (and the planner's compiled count includes it).
"""
from __future__ import annotations

from cmdp import models


def head(c: models.ModelConfig) -> float:
  """Matmul FLOPs of one position's logits."""
  return 2 * c.hidden_size * (c.output_vocab or c.vocab_size)


def layers(c: models.ModelConfig, context: int) -> float:
  """Matmul FLOPs of one token through every layer, attending over `context` positions."""
  d, hd = c.hidden_size, c.head_dim
  proj = d * (c.num_heads + 2 * c.num_kv_heads) * hd + c.num_heads * hd * d
  return c.num_layers * (2 * (proj + 3 * d * c.intermediate_size)
                         + 4 * c.num_heads * hd * context)


def forward(c: models.ModelConfig, rows: int, length: int, logits: int) -> float:
  """A forward pass over `rows` sequences of `length` positions (all attending to the
  whole `length`), logits at `logits` positions of each."""
  return rows * (length * layers(c, length) + logits * head(c))


def step_flops(exp) -> dict:
  """`{"rollout": ..., "update": ...}` matmul FLOPs of one step, all devices together."""
  from cmdp.plan import abstract  # pylint: disable=g-import-not-at-top
  cfg = exp.config
  b = cfg.batch_size
  length = abstract.sequence_length(exp)
  window = length - exp.step_config.response_start
  student, teacher = exp.student.config, exp.teacher.config
  out = {"rollout": 0.0}
  model = abstract.rollout_model(exp)
  if model is not None:
    m = student if model == "student" else teacher
    p, n = cfg.data.max_prompt_len, cfg.rollout.max_new_tokens
    slots = p + n - 1
    # the prefill's P positions score every cache slot too; its logits: the last position
    prefill = b * (p * layers(m, slots) + head(m))
    out["rollout"] = prefill + (n - 1) * b * (layers(m, slots) + head(m))
  passes = cfg.ppo_epochs * 3 + (1 if exp.hp.tis_cap > 0 or cfg.ppo_minibatches > 1 else 0)
  out["update"] = (passes * forward(student, b, length, window) +
                   cfg.ppo_epochs * forward(teacher, b, length, window))
  return out
