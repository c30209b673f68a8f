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

  * rollout: the prefill of each prompt once for its group of G samples (logits of the
    last position only), and N - 1 one-token decode steps over the P + N - 1 cache slots;
  * update: the student's forward and backward (3 x its forward: the backward is two
    matmuls per forward one), and the teacher's forward, over every sequence (L = P + N - 1
    positions, logits over the response window; each group's P prompt columns once per
    group, `models.forward(group_prefix=P)`), plus one more student forward when the step
    first recomputes the trainer's log-probabilities (`tis_cap` or minibatches).

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


def forward(c: models.ModelConfig, rows: int, length: int, logits: int, group: int = 0,
            group_size: int = 1) -> float:
  """A forward pass over `rows` sequences of `length` positions (all attending to the
  whole `length`), logits at the last `logits` positions of each; with `group` > 0 and
  `group_size` G > 1, the first `group` positions are run once per group of G rows
  (`models.forward(group_prefix=...)`: attending over those `group` positions; logits of
  one of them, when the window starts inside them, once per group)."""
  if group_size < 2 or not group:
    return rows * (length * layers(c, length) + logits * head(c))
  groups = rows // group_size
  in_group = max(logits - (length - group), 0)  # window positions inside the group pass
  return (groups * (group * layers(c, group) + in_group * head(c))
          + rows * ((length - group) * layers(c, length) + (logits - in_group) * head(c)))


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
    # each prompt is prefilled once for its group; its P positions score every cache slot
    # too; its logits: the last position
    prefill = b // exp.hp.group_size * (p * layers(m, slots) + head(m))
    out["rollout"] = prefill + (n - 1) * b * (layers(m, slots) + head(m))
  passes = cfg.ppo_epochs * 3 + (1 if exp.hp.tis_cap > 0 or cfg.ppo_minibatches > 1 else 0)
  share = dict(group=exp.step_config.group_prefix, group_size=exp.hp.group_size)
  out["update"] = (passes * forward(student, b, length, window, **share) +
                   cfg.ppo_epochs * forward(teacher, b, length, window, **share))
  return out
