"""What every objective shares: batch checks, the student forward, loss terms, metrics.

Normalisation. The loss an objective returns is normalised by the FULL batch's counts
(`num_tokens`, `num_sequences`), so the trainer sums microbatch losses and gradients.
Metrics are means over the microbatch at hand (the trainer averages them over
microbatches of equal row counts); loss terms in the metrics are rescaled likewise.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from cmdp import constraint, divergences
from cmdp.objectives.config import ObjectiveConfig
from cmdp.objectives.policy_gradient import aggregate, local_mean

BASE_FIELDS = ("inputs", "targets", "input_mask", "mask", "num_tokens", "num_sequences")


def check_batch(batch: dict, objective: str, fields: tuple[str, ...]) -> None:
  """Raises ValueError naming the missing batch fields of `objective` (at trace time)."""
  missing = [f for f in BASE_FIELDS + fields if batch.get(f) is None]
  if missing:
    raise ValueError(f"objective {objective!r}: batch lacks {missing}; the trainer must fill "
                     "them (see the batch contract in cmdp.objectives).")


def student_logits(params, batch: dict, apply_fn) -> jax.Array:
  """float32 `[B, L, V]` student logits, differentiable in `params`."""
  return apply_fn(params, batch["inputs"], batch["input_mask"]).astype(jnp.float32)


def teacher_logits(batch: dict) -> jax.Array | None:
  """The teacher's logits `[B, L, V]` under stop_gradient, or None when absent."""
  t = batch.get("teacher_logits")
  return None if t is None else jax.lax.stop_gradient(t)


def loss_term(values: jax.Array, batch: dict, hp: ObjectiveConfig) -> jax.Array:
  """Per-token `values [B, L]` aggregated by `hp.aggregation`, full-batch normalised."""
  return aggregate(values, batch["mask"], hp.aggregation, batch["num_tokens"],
                   batch["num_sequences"])


def as_metric(term: jax.Array, batch: dict, hp: ObjectiveConfig) -> jax.Array:
  """A full-batch-normalised loss term rescaled to this microbatch's own counts."""
  if hp.aggregation == "token_mean":
    return term * batch["num_tokens"] / jnp.maximum(jnp.sum(batch["mask"]), 1.0)
  return term * batch["num_sequences"] / batch["mask"].shape[0]


def common_metrics(logits: jax.Array, batch: dict, hp: ObjectiveConfig, *,
                   entropy: jax.Array | None = None, kl_token: jax.Array | None = None,
                   costs: jax.Array | None = None) -> dict:
  """The metrics every objective reports (means over this microbatch).

  task_reward: mean R over sequences (when the batch has it).
  response_length: mean number of mask tokens per sequence.
  entropy: mean over mask tokens of the student's entropy (nats).
  kl_token / kl_seq: mean per-token / per-sequence exact kl(student||teacher) (with teacher).
  constraint_value: mean `sequence_cost` of hp.cost under hp.constraint (with teacher); the
    dual update compares it with the budget.
  constraint_satisfaction: fraction of sequences with sequence cost <= hp.budget.

  Already computed per-token `entropy`, `kl_token` (kl(student||teacher)) or `costs`
  (`[B, L]`, hp.cost) may be passed to avoid recomputation.
  """
  mask = batch["mask"]
  sg_logits = jax.lax.stop_gradient(logits)
  if entropy is None:
    entropy = divergences.entropy(sg_logits, chunk_size=hp.chunk_size)
  m = dict(response_length=jnp.mean(jnp.sum(mask, axis=-1)),
           entropy=local_mean(jax.lax.stop_gradient(entropy), mask))
  if batch.get("task_reward") is not None:
    m["task_reward"] = jnp.mean(batch["task_reward"].astype(jnp.float32))
  teacher = teacher_logits(batch)
  if teacher is None:
    return m
  if kl_token is None:
    kl_token = divergences.kl(sg_logits, teacher, chunk_size=hp.chunk_size)
  kl_token = jax.lax.stop_gradient(kl_token) * mask
  m["kl_token"] = local_mean(kl_token, mask)
  m["kl_seq"] = jnp.mean(jnp.sum(kl_token, axis=-1))
  if costs is None:
    costs = constraint.token_costs(hp.cost, sg_logits, teacher, batch["targets"],
                                   chunk_size=hp.chunk_size)
  costs = jax.lax.stop_gradient(costs)
  m["constraint_value"] = jnp.mean(constraint.sequence_cost(costs, mask, hp.constraint))
  m["constraint_satisfaction"] = jnp.mean(constraint.constraint_satisfied(
      costs, mask, hp.budget, hp.constraint).astype(jnp.float32))
  return m


def add_entropy_bonus(loss: jax.Array, logits: jax.Array, batch: dict, hp: ObjectiveConfig,
                      metrics: dict) -> tuple[jax.Array, jax.Array]:
  """Adds `-entropy_coef * aggregated entropy` (differentiable) to `loss` and its metric
  (`entropy_bonus`) to `metrics`; returns `(loss, per-token entropy [B, L])`."""
  entropy = divergences.entropy(logits, chunk_size=hp.chunk_size)
  if hp.entropy_coef == 0:
    return loss, entropy
  term = -hp.entropy_coef * loss_term(entropy, batch, hp)
  metrics["entropy_bonus"] = as_metric(term, batch, hp)
  return loss + term, entropy
