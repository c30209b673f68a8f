"""What every objective shares: the constraint's measurement, cost gradients, metrics.

The constraint is defined once, by `hp.cost`, `hp.constraint`, `hp.cost_discount` and
`hp.budget`, on the DEPLOYED student (its raw logits, temperature 1) against the teacher,
on the states the sampling policy visits. `sequence_scores` measures it; the training
metrics, the budget calibration and the evaluation all call it.

Normalisation. Losses and metrics are normalised by the FULL batch's counts (`num_tokens`,
`num_sequences`): each microbatch returns its share, and the train step sums the shares,
so gradients and metrics are exact under gradient accumulation.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from cmdp import constraint, divergences
from cmdp.objectives.config import ObjectiveConfig
from cmdp.objectives.policy_gradient import aggregate, sequence_sum, token_sum

BASE_FIELDS = ("targets", "mask", "num_tokens", "num_sequences")


def check_batch(batch: dict, objective: str, fields: tuple[str, ...],
                teacher_logits=None, needs_teacher: bool = False) -> None:
  """Raises ValueError naming the missing batch fields of `objective` (at trace time)."""
  missing = [f for f in BASE_FIELDS + fields if batch.get(f) is None]
  if needs_teacher and teacher_logits is None:
    missing.append("teacher_logits")
  if missing:
    raise ValueError(f"objective {objective!r}: the step lacks {missing}; the trainer must "
                     "fill them (see the batch contract in cmdp.objectives).")


def policy_logits(student_logits: jax.Array, hp: ObjectiveConfig) -> jax.Array:
  """The sampling policy's logits: `student_logits / hp.temperature`."""
  return student_logits if hp.temperature == 1.0 else student_logits / hp.temperature


def token_costs(student_logits: jax.Array, teacher_logits: jax.Array, targets: jax.Array,
                hp: ObjectiveConfig) -> jax.Array:
  """Per-token cost `c_t` `[B, L]` of the deployed student (`hp.cost`), differentiable in
  `student_logits`, teacher under stop_gradient."""
  return constraint.token_costs(hp.cost, student_logits, jax.lax.stop_gradient(teacher_logits),
                                targets, chunk_size=hp.chunk_size)


def sequence_scores(student_logits: jax.Array, teacher_logits: jax.Array, batch: dict,
                    hp: ObjectiveConfig, *, costs: jax.Array | None = None,
                    kl_token: jax.Array | None = None) -> dict:
  """The constraint and the KL per sequence, each `[B]` float32 (no gradient).

  sequence_cost: `C(y)` of `hp.cost` under `hp.constraint` and `hp.cost_discount`.
  satisfied: `C(y) <= hp.budget` (1.0 / 0.0).
  kl_seq: `sum_t kl(student||teacher)` at the response's states, in nats.
  length: response tokens.
  `costs` / `kl_token` (`[B, L]`) may be passed when already computed.
  """
  mask = batch["mask"]
  student = jax.lax.stop_gradient(student_logits)
  teacher = jax.lax.stop_gradient(teacher_logits)
  if costs is None:
    costs = token_costs(student, teacher, batch["targets"], hp)
  if kl_token is None:
    kl_token = (costs if hp.cost == "reverse_kl" else
                divergences.kl(student, teacher, chunk_size=hp.chunk_size))
  costs, kl_token = jax.lax.stop_gradient(costs), jax.lax.stop_gradient(kl_token)
  seq_cost = constraint.sequence_cost(costs, mask, hp.constraint, hp.cost_discount)
  return dict(sequence_cost=seq_cost,
              satisfied=(seq_cost <= hp.budget).astype(jnp.float32),
              kl_seq=jnp.sum(kl_token * mask, axis=-1),
              length=jnp.sum(mask, axis=-1))


def cost_gradient(coef: jax.Array, student_logits: jax.Array, teacher_logits: jax.Array,
                  batch: dict, hp: ObjectiveConfig, kl_token: jax.Array | None = None):
  """The direct dependence on theta of a reward term `-coef_t * c_t(theta)`.

  `coef [B, L]` is a constant per token (kappa v_t for cmdp, lambda w_t for the
  Lagrangians). Returns `(exact [B, L] or None, immediate [B, L] or None)`: the loss term
  whose gradient is the direct one (`coef_t * c_t(theta)`: reverse_kl `KL_t(theta)` exact
  over the vocabulary; logratio `log pi(y_t|s_t)` of the deployed student; teacher_nll:
  none), and, for reverse_kl, whose cost depends on the state only, the immediate reward
  `-coef_t * KL_t` that a causal estimator may drop from the token's own return.
  """
  coef = jax.lax.stop_gradient(coef)
  if hp.cost == "reverse_kl":
    if kl_token is None:
      kl_token = divergences.kl(student_logits, jax.lax.stop_gradient(teacher_logits),
                                chunk_size=hp.chunk_size)
    return coef * kl_token, -coef * jax.lax.stop_gradient(kl_token)
  if hp.cost == "logratio":
    logp = divergences.token_logprobs(student_logits, batch["targets"],
                                      chunk_size=hp.chunk_size)
    return coef * logp, None
  return None, None


def loss_term(values: jax.Array, batch: dict, hp: ObjectiveConfig) -> jax.Array:
  """Per-token `values [B, L]` aggregated by `hp.aggregation`, full-batch normalised."""
  return aggregate(values, batch["mask"], hp.aggregation, batch["num_tokens"],
                   batch["num_sequences"])


def group_fractions(flags: jax.Array, batch: dict, group_size: int) -> tuple:
  """Shares of the full batch's groups (`num_sequences / group_size` of them) whose rows'
  0/1 `flags [B]` are all 1 and mixed: `(all, mixed)` (a microbatch holds whole groups)."""
  g = flags.reshape(-1, group_size)
  groups = batch["num_sequences"] / group_size
  every, some = jnp.all(g > 0, axis=-1), jnp.any(g > 0, axis=-1)
  return (jnp.sum(every) / groups, jnp.sum(some & ~every) / groups)


def common_metrics(student_logits: jax.Array, teacher_logits, batch: dict,
                   hp: ObjectiveConfig, *, entropy: jax.Array | None = None,
                   scores: dict | None = None, costs: jax.Array | None = None) -> dict:
  """The metrics every objective reports (shares of full-batch means, see `token_sum`).

  task_reward: mean R per sequence (when the batch has it).
  response_length: mean response tokens per sequence.
  entropy: mean over response tokens of the sampling policy's entropy (nats).
  With a teacher, from `sequence_scores` (passed or computed):
  kl_token: sum of kl(student||teacher) / response tokens.
  kl_seq: mean per-sequence sum of kl(student||teacher); `seq/kl_seq` the per-row values
    (the train step turns them into the batch's quantiles).
  constraint_value: mean `C(y)`; constraint_satisfaction: fraction with `C(y) <= d`.
  groups_violating, groups_mixed: shares of the groups whose samples all violate `d`, and
    whose samples fall on both sides of it.
  entropy_gap: the deployed student's entropy minus the teacher's, per response token
    (negative: the student is sharper than its teacher).
  violating_cost, violating_cost_before_flag: sum over violating responses of `C(y)`, and
    of the part of it before the Sauté flag fires, per sequence of the batch (their ratio,
    `cost_before_flag`, is formed by the train step when some response violates).
  `costs` (`[B, L]`, the constraint's per-token costs) may be passed when computed.
  """
  mask = batch["mask"]
  if entropy is None:
    entropy = divergences.entropy(jax.lax.stop_gradient(policy_logits(student_logits, hp)),
                                  chunk_size=hp.chunk_size)
  m = dict(response_length=sequence_sum(jnp.sum(mask, axis=-1), batch),
           entropy=token_sum(jax.lax.stop_gradient(entropy), batch))
  if batch.get("task_reward") is not None:
    m["task_reward"] = sequence_sum(batch["task_reward"].astype(jnp.float32), batch)
  if teacher_logits is None:
    return m
  student = jax.lax.stop_gradient(student_logits)
  teacher = jax.lax.stop_gradient(teacher_logits)
  if costs is None:
    costs = token_costs(student, teacher, batch["targets"], hp)
  costs = jax.lax.stop_gradient(costs)
  if scores is None:
    scores = sequence_scores(student, teacher, batch, hp, costs=costs)
  m["kl_token"] = jnp.sum(scores["kl_seq"]) / batch["num_tokens"]
  m["kl_seq"] = sequence_sum(scores["kl_seq"], batch)
  m["seq/kl_seq"] = scores["kl_seq"]
  m["constraint_value"] = sequence_sum(scores["sequence_cost"], batch)
  m["constraint_satisfaction"] = sequence_sum(scores["satisfied"], batch)
  violating = 1.0 - scores["satisfied"]
  if violating.shape[0] % hp.group_size == 0:  # rows in whole groups (every trainer batch)
    m["groups_violating"], m["groups_mixed"] = group_fractions(violating, batch, hp.group_size)
  deployed = (jax.lax.stop_gradient(entropy) if hp.temperature == 1.0 else
              divergences.entropy(student, chunk_size=hp.chunk_size))
  m["entropy_gap"] = token_sum(deployed - divergences.entropy(teacher, chunk_size=hp.chunk_size),
                               batch)
  flags = constraint.violation_flags(costs, mask, hp.budget, hp.constraint, hp.cost_discount)
  weighted = constraint.sequence_weights(costs, mask, hp.constraint, hp.cost_discount) * \
      jnp.where(mask > 0, costs, 0.0)
  before = jnp.sum(jnp.where(flags, 0.0, weighted), axis=-1)
  m["violating_cost"] = sequence_sum(violating * scores["sequence_cost"], batch)
  m["violating_cost_before_flag"] = sequence_sum(violating * before, batch)
  return m


def step_metrics(metrics: dict) -> dict:
  """A step's summed metrics -> the logged ones: each per-row `seq/<name> [B]` becomes
  `<name>_q10`, `<name>_q50`, `<name>_q90` (the batch's quantiles, linear interpolation)."""
  out = {k: v for k, v in metrics.items() if not k.startswith("seq/")}
  for k, v in metrics.items():
    if k.startswith("seq/"):
      for q in (10, 50, 90):
        out[f"{k[4:]}_q{q}"] = jnp.quantile(v.astype(jnp.float32), q / 100)
  return out


def add_entropy_bonus(loss: jax.Array, student_logits: jax.Array, batch: dict,
                      hp: ObjectiveConfig, metrics: dict) -> tuple[jax.Array, jax.Array]:
  """Adds `-entropy_coef * aggregated entropy` of the sampling policy (differentiable) to
  `loss` and its metric (`entropy_bonus`); returns `(loss, per-token entropy [B, L])`."""
  entropy = divergences.entropy(policy_logits(student_logits, hp), chunk_size=hp.chunk_size)
  if hp.entropy_coef == 0:
    return loss, entropy
  term = -hp.entropy_coef * loss_term(entropy, batch, hp)
  metrics["entropy_bonus"] = term
  return loss + term, entropy
