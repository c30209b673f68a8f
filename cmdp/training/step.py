"""The train state and the pure update step `(state, teacher_params, batch) -> (state, metrics)`.

One step on one rollout batch:

  1. (when `hp.tis_cap > 0` or there are several minibatches) the trainer's own
     log-probabilities of the sampled tokens, one forward pass over the microbatches;
  2. `ppo_epochs` passes over the batch, each in `ppo_minibatches` minibatches of whole
     prompt groups, each minibatch one optimiser step. Within a minibatch, gradients are
     accumulated over `grad_accum_steps` microbatches (a `lax.scan`). The frozen teacher
     runs INSIDE that scan, one microbatch at a time under stop_gradient: no `[B, L, V]`
     array is ever held, and peak memory follows the microbatch;
  3. the objective updates its own state (e.g. the Lagrange multiplier) from the first
     pass's metrics, the on-policy measurement of the constraint.

Everything measured about an update is computed inside the step: each loss term, the
objective's diagnostics, the sampler-trainer mismatch (mean |log pi_sampler - log
pi_trainer| and the k3 estimate of kl(pi_sampler||pi_trainer), on the first pass before
any update), the PPO clip fraction and approximate KL to the sampling policy on the last
pass, and the grad / param / update norms. The step names no objective: the registered
objective's loss, state and update are called through its interface.

Losses and metrics of a microbatch are normalised by the FULL batch's token and sequence
counts, so summing microbatches gives the full batch's values; a minibatch's gradient is
then multiplied by the number of minibatches, which makes it the gradient of the
minibatch's own normalised loss (exactly so for sequence-normalised aggregations).

Microbatches and minibatches take every n-th prompt group (group-strided), and each is
constrained to the batch sharding, so a row-sharded batch splits without moving rows
between devices when each device holds whole groups; the gradients are constrained to the
parameter layout (levanter's sharded accumulation).
"""
from __future__ import annotations

from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import optax

from cmdp import divergences, models
from cmdp.objectives import Objective, ObjectiveConfig

# Batch fields with a leading batch axis (split into micro/minibatches); see cmdp.objectives.
ROW_FIELDS = ("inputs", "targets", "input_mask", "mask", "old_logprobs", "teacher_logits",
              "ref_logprobs", "task_reward", "trainer_logprobs")


class TrainState(flax.struct.PyTreeNode):
  """Everything a run needs to continue, and nothing frozen (no teacher).

  step: [] int32, rollout steps taken (each may hold several optimiser updates).
  params: the student's parameters.
  opt_state: the optax state.
  objective_state: the objective's own state (`Objective.init_state`; e.g. the Lagrange
    multiplier of dual_lagrangian; None for stateless objectives).
  rng: the PRNG key for the next rollout.
  """
  step: jax.Array
  params: Any
  opt_state: Any
  objective_state: Any
  rng: jax.Array


def init_state(params, optimizer: optax.GradientTransformation, objective: Objective,
               hp: ObjectiveConfig, rng: jax.Array) -> TrainState:
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    opt_state=optimizer.init(params),
                    objective_state=objective.init_state(hp), rng=rng)


def split_rows(batch: dict, n: int, group_size: int) -> dict:
  """Row fields `[B, ...]` -> `[n, B/n, ...]`, part k holding prompt groups k, k+n, ...
  (whole groups, strided); other fields unchanged."""
  def split(v):
    groups = v.shape[0] // group_size
    v = v.reshape(groups // n, n, group_size, *v.shape[1:])
    v = jnp.swapaxes(v, 0, 1)
    return v.reshape(n, (groups // n) * group_size, *v.shape[3:])
  return {k: (split(v) if k in ROW_FIELDS and v is not None else v) for k, v in batch.items()}


def _sum(a, b):
  return jax.tree.map(jnp.add, a, b)


def _zeros_like_tree(tree):
  return jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), tree)


class StepConfig(flax.struct.PyTreeNode):
  """The static shape of an update (see the module docstring)."""
  grad_accum_steps: int = flax.struct.field(pytree_node=False, default=1)
  ppo_epochs: int = flax.struct.field(pytree_node=False, default=1)
  ppo_minibatches: int = flax.struct.field(pytree_node=False, default=1)
  teacher_logits_dtype: str = flax.struct.field(pytree_node=False, default="float32")


def make_train_step(objective: Objective, hp: ObjectiveConfig,
                    student_config: models.ModelConfig,
                    optimizer: optax.GradientTransformation,
                    step_config: StepConfig = StepConfig(),
                    teacher_config: models.ModelConfig | None = None,
                    constrain_rows: Callable = lambda x: x,
                    constrain_grads: Callable = lambda g: g):
  """Returns the pure `train_step(state, teacher_params, batch) -> (state, metrics)`.

  Args:
    objective, hp: the registered objective and its config.
    student_config: the student's architecture.
    optimizer: the optax transformation.
    step_config: microbatches, PPO epochs and minibatches, teacher logits dtype.
    teacher_config: the teacher's architecture; None when the batch brings the teacher's
      logits itself (a teacher on its own devices, see `make_microbatch_fns`).
    constrain_rows, constrain_grads: sharding constraints for a microbatch's rows and for
      the gradients (identity off a mesh; see cmdp.training.programs).

  Args of the returned function:
    state: a `TrainState` (donated by the compiled program).
    teacher_params: the frozen teacher's parameters (None when `teacher_config` is None).
    batch: the dict of `cmdp.objectives` plus `inputs` and `input_mask`, leading axis =
      sequences; `num_tokens` and `num_sequences` are filled in here.

  A non-finite loss or gradient leaves the whole state unchanged and sets `nonfinite` to 1.
  """
  sc = step_config
  group = hp.group_size
  loss_fn = make_loss_fn(objective, hp, student_config, teacher_config,
                         sc.teacher_logits_dtype)
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def micro_scan(fn, batch, init):
    """Scans `fn(mb) -> tree` over `grad_accum_steps` microbatches of `batch`, summing."""
    n = sc.grad_accum_steps
    if n == 1:
      return fn(constrain_rows(batch))
    rows = {k: v for k, v in split_rows(batch, n, group).items() if k in ROW_FIELDS}
    shared = {k: v for k, v in batch.items() if k not in ROW_FIELDS}
    body = lambda acc, mb: (_sum(acc, fn(constrain_rows({**shared, **mb}))), None)
    return jax.lax.scan(body, init, rows)[0]

  def minibatch_update(params, opt_state, teacher_params, objective_state, mb):
    def one(micro):
      (loss, metrics), grads = grad_fn(params, teacher_params, micro, objective_state)
      return loss, metrics, constrain_grads(grads)
    abstract = jax.eval_shape(one, _first_micro(mb, sc.grad_accum_steps, group))
    loss, metrics, grads = micro_scan(one, mb, _zeros_like_tree(abstract))
    m = sc.ppo_minibatches
    grads = jax.tree.map(lambda g: g * m, grads) if m > 1 else grads
    updates, opt_state = optimizer.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    norms = dict(grad_norm=optax.global_norm(grads), update_norm=optax.global_norm(updates),
                 loss_minibatch=loss * m)
    return params, opt_state, loss, metrics, norms

  def trainer_logprobs(params, batch):
    """log pi_trainer(targets) of the current params (no gradient), `[B, L]`."""
    def one(micro):
      logits = models.forward(student_config, params, micro["inputs"], micro["input_mask"])
      policy = logits.astype(jnp.float32) / hp.temperature
      return divergences.token_logprobs(policy, micro["targets"], chunk_size=hp.chunk_size)
    n = sc.grad_accum_steps * sc.ppo_minibatches
    if n == 1:
      return one(batch)
    parts = jax.lax.map(one, {k: v for k, v in split_rows(batch, n, group).items()
                              if k in ("inputs", "input_mask", "targets")})
    return _unsplit(parts, n, group)

  def train_step(state: TrainState, teacher_params, batch: dict):
    batch = dict(batch)
    batch["num_tokens"] = jnp.maximum(batch["mask"].sum(), 1.0)
    batch["num_sequences"] = jnp.asarray(batch["mask"].shape[0], jnp.float32)
    mask = batch["mask"]
    extra = {}
    if hp.tis_cap > 0 or sc.ppo_minibatches > 1:
      lp = jax.lax.stop_gradient(trainer_logprobs(state.params, batch))
      batch["trainer_logprobs"] = lp * mask
      extra = mismatch_metrics(lp, batch["old_logprobs"], mask, batch["num_tokens"])

    params, opt_state = state.params, state.opt_state
    m = sc.ppo_minibatches
    first = last = None
    norms = []
    for epoch in range(sc.ppo_epochs):
      if m == 1:
        params, opt_state, loss, metrics, nrm = minibatch_update(
            params, opt_state, teacher_params, state.objective_state, batch)
      else:
        rows = {k: v for k, v in split_rows(batch, m, group).items() if k in ROW_FIELDS}
        shared = {k: v for k, v in batch.items() if k not in ROW_FIELDS}

        def body(carry, mb_rows):
          p, o = carry
          p, o, loss, metrics, nrm = minibatch_update(p, o, teacher_params,
                                                      state.objective_state,
                                                      {**shared, **mb_rows})
          return (p, o), (loss, metrics, nrm)
        (params, opt_state), (loss, metrics, nrm) = jax.lax.scan(body, (params, opt_state),
                                                                 rows)
        loss, metrics = jnp.sum(loss), jax.tree.map(jnp.sum, metrics)
        nrm = dict(first=nrm["grad_norm"][0], grad_norm=jnp.max(nrm["grad_norm"]))
      norms.append(nrm)
      if epoch == 0:
        first = (loss, metrics)
      last = metrics
    loss, metrics = first
    if not extra and "approx_kl_old" in metrics:  # one pass, no update before it: mismatch
      extra = dict(mismatch_k3=metrics["approx_kl_old"],
                   mismatch_abs_logprob=metrics["abs_logprob_diff"])
    objective_state = objective.update_state(state.objective_state, metrics, hp)

    grad_norm = first_norm = norms[0].get("first", norms[0]["grad_norm"])
    if sc.ppo_epochs > 1 or m > 1:  # every update's gradient must be finite
      grad_norm = jnp.max(jnp.stack([n["grad_norm"] for n in norms]))
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
    new_state = state.replace(
        step=state.step + finite.astype(jnp.int32), params=keep(params, state.params),
        opt_state=keep(opt_state, state.opt_state),
        objective_state=keep(objective_state, state.objective_state))
    out = dict(metrics)
    out.update(extra)
    if sc.ppo_epochs > 1 and "clip_fraction" in last:
      out["clip_fraction_last_epoch"] = last["clip_fraction"]
      out["approx_kl_old_last_epoch"] = last["approx_kl_old"]
    out.update(objective.state_metrics(state.objective_state, hp))
    if sc.ppo_epochs > 1 or m > 1:
      out["grad_norm_max"] = grad_norm
    out.update(
        loss=loss, grad_norm=first_norm, param_norm=optax.global_norm(state.params),
        update_norm=optax.global_norm(jax.tree.map(jnp.subtract, params, state.params)),
        nonfinite=1.0 - finite.astype(jnp.float32))
    return new_state, out

  return train_step


def make_loss_fn(objective: Objective, hp: ObjectiveConfig,
                 student_config: models.ModelConfig,
                 teacher_config: models.ModelConfig | None,
                 teacher_logits_dtype: str = "float32"):
  """`loss_fn(params, teacher_params, microbatch, objective_state) -> (loss, metrics)`:
  the teacher's logits (from `teacher_params` under stop_gradient, or the microbatch's own
  `teacher_logits`), the student's raw logits, and the registered objective on both."""
  def loss_fn(params, teacher_params, batch, objective_state):
    teacher = batch.get("teacher_logits")
    if teacher_config is not None:
      teacher = models.forward(teacher_config, teacher_params, batch["inputs"],
                               batch["input_mask"]).astype(jnp.dtype(teacher_logits_dtype))
    if teacher is not None:
      teacher = jax.lax.stop_gradient(teacher).astype(jnp.float32)
    logits = models.forward(student_config, params, batch["inputs"], batch["input_mask"])
    return objective.loss_fn(logits.astype(jnp.float32), teacher, batch, hp, objective_state)
  return loss_fn


def mismatch_metrics(trainer_lp, sampler_lp, mask, num_tokens) -> dict:
  """The sampler-trainer mismatch on the sampled tokens: mean |log pi_s - log pi_t| and the
  k3 estimate of kl(pi_sampler||pi_trainer), over the response tokens."""
  t = jnp.where(mask > 0, trainer_lp, 0.0)
  s = jnp.where(mask > 0, sampler_lp, 0.0)
  return dict(mismatch_abs_logprob=jnp.sum(jnp.abs(t - s) * mask) / num_tokens,
              mismatch_k3=jnp.sum(divergences.k3(s, t) * mask) / num_tokens)


def _first_micro(batch, n, group):
  if n == 1:
    return batch
  parts = split_rows(batch, n, group)
  return {k: (v[0] if k in ROW_FIELDS and v is not None else v) for k, v in parts.items()}


def _unsplit(parts, n, group):
  """Inverse of `split_rows` for one `[n, B/n, ...]` array."""
  rows = parts.shape[1]
  v = parts.reshape(n, rows // group, group, *parts.shape[2:])
  v = jnp.swapaxes(v, 0, 1)
  return v.reshape(n * rows, *parts.shape[2:])
