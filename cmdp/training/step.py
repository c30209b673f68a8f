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

The math of these stages is written once, as `StepParts`. `make_train_step` composes them
into one program (the teacher on the student's devices); `make_host_train_step` drives
their compiled forms from a short host loop when the teacher has devices of its own: per
microbatch, the teacher's logits are computed there and handed to the student's devices,
one microbatch at a time, so there too no `[B, L, V]` array of the whole batch exists.

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

from typing import Any, Callable, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import optax

from cmdp import divergences, models
from cmdp.objectives import Objective, ObjectiveConfig, step_metrics

# Batch fields with a leading batch axis (split into micro/minibatches); see cmdp.objectives.
ROW_FIELDS = ("inputs", "targets", "input_mask", "mask", "old_logprobs", "teacher_logits",
              "ref_logprobs", "task_reward", "trainer_logprobs", "row_index")


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
  # First column of the [B, L] fields that can hold a response token (`response_window`):
  # 0, or max_prompt_len - 1 when every sequence comes from the sampler (left-padded
  # prompts), so no logits are computed over the prompt.
  response_start: int = flax.struct.field(pytree_node=False, default=0)
  # Leading columns of `inputs` that are the same real tokens in every row (the prompts'
  # shared prefix, `models.forward(shared_prefix=...)`): run once per microbatch. 0: off.
  shared_prefix: int = flax.struct.field(pytree_node=False, default=0)
  # Leading columns of `inputs` that are the same (tokens and mask) in the G rows of each
  # prompt group (`hp.group_size`): a sampled group's left-padded prompt up to
  # `response_start` (`Experiment.group_prefix`).
  # Run once per group in every forward pass of the student and the teacher (after the
  # shared prefix), with the student's gradient through it. 0: off.
  group_prefix: int = flax.struct.field(pytree_node=False, default=0)
  # An optimiser update whose gradient is exactly zero everywhere leaves the params and the
  # optimiser state bitwise unchanged (Adam's momentum would otherwise still move them) and
  # is counted in `skipped` (`optimizer.skip_zero_grad`).
  skip_zero_grad: bool = flax.struct.field(pytree_node=False, default=True)

  def prefixes(self, group_size: int) -> dict:
    """`models.forward`'s prefix-sharing arguments."""
    return dict(shared_prefix=self.shared_prefix, group_prefix=self.group_prefix,
                group_size=group_size)


def response_window(batch: dict, start: int) -> dict:
  """The batch's per-token fields from column `start` on (`[B, L, ...]` -> `[B, L - start,
  ...]`); `inputs` and `input_mask` stay whole, since the forward pass runs over every
  position. Exact when no response token lies before `start` (the objectives read only
  masked positions, and their scans over tokens carry nothing through masked ones)."""
  if not start:
    return batch
  length = batch["mask"].shape[1]
  keep_whole = ("inputs", "input_mask")
  return {k: (v[:, start:] if k not in keep_whole and jnp.ndim(v) >= 2 and v.shape[1] == length
              else v) for k, v in batch.items()}


class StepParts(NamedTuple):
  """The pure pieces of one update; `make_train_step` composes them into one program, and
  `make_host_train_step` drives their compiled forms from the host (a teacher on its own
  devices). All the math is here, once.

  prepare(params, batch) -> (rows, shared, extra): the batch's row fields (plus the
    trainer's log-probabilities when needed), the fields every microbatch shares (with
    `num_tokens` and `num_sequences` of the full batch) and the mismatch metrics.
  select(rows, minibatch, micro) -> rows of microbatch `micro` of minibatch `minibatch`
    (group-strided, as the scans split them; indices may be traced).
  micro(params, teacher_params, microbatch, objective_state) -> (loss, metrics, grads) of
    one microbatch (normalised by the full batch's counts, so microbatches sum).
  zeros(params, teacher_params, objective_state, rows, shared) -> zero sums shaped like
    `micro`'s output on a microbatch's `rows`.
  accumulate(params, teacher_params, objective_state, rows, shared, sums) -> sums plus
    `micro` of the microbatch `rows`.
  apply(params, opt_state, sums) -> (params, opt_state, result): one optimiser update from
    a minibatch's summed gradients; result = (loss, metrics, norms).
  finish(state, params, opt_state, passes, extra) -> (state, metrics): the objective's
    state update, the finite check and the step's metrics, from each pass's minibatch
    results (`result`, or for several minibatches their stack or list).
  """
  prepare: Callable
  select: Callable
  micro: Callable
  zeros: Callable
  accumulate: Callable
  apply: Callable
  finish: Callable


# Vocabularies from this size on get `hp.chunk_size` = DEFAULT_CHUNK when it is 0: the
# log-probs, KL cost (and its gradient) and entropies then hold one chunk of positions'
# float32 [rows, chunk, V] temporaries at a time, not the whole window's (Qwen2.5: 152k
# tokens, Llama-3: 128k). Same numbers (`cmdp.divergences`); SmolLM2's 49k stay unchunked.
LARGE_VOCAB = 100_000
DEFAULT_CHUNK = 64


def with_default_chunking(hp: ObjectiveConfig, config: models.ModelConfig) -> ObjectiveConfig:
  """`hp` with `chunk_size` = DEFAULT_CHUNK when it is 0 and the vocabulary is large."""
  vocab = config.output_vocab or config.vocab_size
  if hp.chunk_size or vocab < LARGE_VOCAB:
    return hp
  return hp.replace(chunk_size=DEFAULT_CHUNK)


def make_step_parts(objective: Objective, hp: ObjectiveConfig,
                    student_config: models.ModelConfig,
                    optimizer: optax.GradientTransformation,
                    step_config: StepConfig = StepConfig(),
                    teacher_config: models.ModelConfig | None = None,
                    constrain_rows: Callable = lambda x: x,
                    constrain_grads: Callable = lambda g: g,
                    learning_rate: Callable | None = None) -> StepParts:
  """The `StepParts` of an update (arguments as `make_train_step`'s)."""
  sc = step_config
  hp = with_default_chunking(hp, student_config)
  group = hp.group_size
  a, m = sc.grad_accum_steps, sc.ppo_minibatches
  start = sc.response_start
  prefixes = sc.prefixes(group)
  grad_fn = make_grad_fn(objective, hp, student_config, teacher_config,
                         sc.teacher_logits_dtype, start, prefixes)

  def trainer_logprobs(params, rows):
    """log pi_trainer(targets) of the current params (no gradient), `[B, L]` (zeros
    before `response_start`)."""
    def one(micro):
      logits = models.forward(student_config, params, micro["inputs"], micro["input_mask"],
                              start, **prefixes)
      policy = logits.astype(jnp.float32) / hp.temperature
      lp = divergences.token_logprobs(policy, micro["targets"][:, start:],
                                      chunk_size=hp.chunk_size)
      return jnp.pad(lp, ((0, 0), (start, 0)))
    n = a * m
    if n == 1:
      return one(rows)
    parts = jax.lax.map(one, {k: v for k, v in split_rows(rows, n, group).items()
                              if k in ("inputs", "input_mask", "targets")})
    return _unsplit(parts, n, group)

  def prepare(params, batch):
    rows = {k: v for k, v in batch.items() if k in ROW_FIELDS}
    shared = {k: v for k, v in batch.items() if k not in ROW_FIELDS}
    mask = rows["mask"]
    shared["num_tokens"] = jnp.maximum(mask.sum(), 1.0)
    shared["num_sequences"] = jnp.asarray(mask.shape[0], jnp.float32)
    # Per-row metrics (`seq/...`) of a microbatch land in their rows of a full-batch vector.
    rows["row_index"] = jnp.arange(mask.shape[0], dtype=jnp.int32)
    shared["row_slots"] = jnp.zeros(mask.shape[:1], jnp.float32)
    extra = {}
    if hp.tis_cap > 0 or m > 1:
      lp = jax.lax.stop_gradient(trainer_logprobs(params, rows))
      rows["trainer_logprobs"] = lp * mask
      extra = mismatch_metrics(lp, rows["old_logprobs"], mask, shared["num_tokens"])
    return rows, shared, extra

  def select(rows, minibatch, micro_index):
    pick = lambda parts, i: jax.tree.map(
        lambda v: jax.lax.dynamic_index_in_dim(v, i, 0, keepdims=False), parts)
    if m > 1:
      rows = pick(split_rows(rows, m, group), minibatch)
    return pick(split_rows(rows, a, group), micro_index) if a > 1 else rows

  def micro(params, teacher_params, batch, objective_state):
    loss, metrics, signal, grads = grad_fn(params, teacher_params, batch, objective_state)
    metrics = {k: (batch["row_slots"].at[batch["row_index"]].set(v) if k.startswith("seq/")
                   else v) for k, v in metrics.items()}
    metrics.update(signal_metrics(signal, batch, group))
    return loss, metrics, constrain_grads(grads)

  def zeros(params, teacher_params, objective_state, rows, shared):
    return _zeros_like_tree(jax.eval_shape(micro, params, teacher_params,
                                           {**shared, **rows}, objective_state))

  def accumulate(params, teacher_params, objective_state, rows, shared, sums):
    return _sum(sums, micro(params, teacher_params, constrain_rows({**shared, **rows}),
                            objective_state))

  def apply(params, opt_state, sums):
    loss, metrics, grads = sums
    grads = jax.tree.map(lambda g: g * m, grads) if m > 1 else grads
    def update():
      updates, new_opt_state = optimizer.update(grads, opt_state, params)
      return optax.apply_updates(params, updates), new_opt_state, updates

    skipped = jnp.zeros((), jnp.float32)
    if sc.skip_zero_grad:  # no gradient: params and optimiser state pass through bitwise
      moves = has_gradient(grads)
      new_params, new_opt_state, updates = jax.lax.cond(
          moves, update, lambda: (params, opt_state, jax.tree.map(jnp.zeros_like, params)))
      skipped = 1.0 - moves.astype(jnp.float32)
    else:
      new_params, new_opt_state, updates = update()
    norms = dict(grad_norm=optax.global_norm(grads), update_norm=optax.global_norm(updates),
                 loss_minibatch=loss * m, skipped=skipped)
    return new_params, new_opt_state, (loss, metrics, norms)

  def combine(result):
    """A pass's minibatch results -> the pass's (loss, metrics, norms)."""
    if m == 1:
      return result
    if isinstance(result, list):
      result = jax.tree.map(lambda *x: jnp.stack(x), *result)
    loss, metrics, nrm = result
    return (jnp.sum(loss), jax.tree.map(lambda x: jnp.sum(x, axis=0), metrics),
            dict(first=nrm["grad_norm"][0], grad_norm=jnp.max(nrm["grad_norm"]),
                 skipped=jnp.sum(nrm["skipped"])))

  def finish(state: TrainState, params, opt_state, passes, extra):
    passes = [combine(p) for p in passes]
    loss, metrics, _ = passes[0]
    last = passes[-1][1]
    norms = [p[2] for p in passes]
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
    out = step_metrics(metrics)
    out.update(extra)
    if sc.ppo_epochs > 1 and "clip_fraction" in last:
      out["clip_fraction_last_epoch"] = last["clip_fraction"]
      out["approx_kl_old_last_epoch"] = last["approx_kl_old"]
    out.update(objective.state_metrics(state.objective_state, hp))
    if sc.ppo_epochs > 1 or m > 1:
      out["grad_norm_max"] = grad_norm
    update_norm = optax.global_norm(jax.tree.map(jnp.subtract, params, state.params))
    out.update(derived_metrics(out, update_norm, state, learning_rate))
    out.update(
        loss=loss, grad_norm=first_norm, skipped=sum(n["skipped"] for n in norms), param_norm=optax.global_norm(state.params),
        update_norm=update_norm, nonfinite=1.0 - finite.astype(jnp.float32))
    return new_state, out

  return StepParts(prepare=prepare, select=select, micro=micro, zeros=zeros,
                   accumulate=accumulate, apply=apply, finish=finish)


def make_train_step(objective: Objective, hp: ObjectiveConfig,
                    student_config: models.ModelConfig,
                    optimizer: optax.GradientTransformation,
                    step_config: StepConfig = StepConfig(),
                    teacher_config: models.ModelConfig | None = None,
                    constrain_rows: Callable = lambda x: x,
                    constrain_grads: Callable = lambda g: g,
                    learning_rate: Callable | None = None):
  """Returns the pure `train_step(state, teacher_params, batch) -> (state, metrics)`: one
  program, the teacher inside the accumulation scan.

  Args:
    objective, hp: the registered objective and its config.
    student_config: the student's architecture.
    optimizer: the optax transformation.
    step_config: microbatches, PPO epochs and minibatches, teacher logits dtype.
    teacher_config: the teacher's architecture; None when the batch brings the teacher's
      logits itself (`teacher_logits`, `[B, L, V]`; a teacher on its own devices uses
      `make_host_train_step` instead, which never holds them for the whole batch).
    constrain_rows, constrain_grads: sharding constraints for a microbatch's rows and for
      the gradients (identity off a mesh; see cmdp.training.programs).
    learning_rate: the optimiser's schedule (of its update count), for `update_ratio`;
      None: not logged.

  Args of the returned function:
    state: a `TrainState` (donated by the compiled program).
    teacher_params: the frozen teacher's parameters (None when `teacher_config` is None).
    batch: the dict of `cmdp.objectives` plus `inputs` and `input_mask`, leading axis =
      sequences; `num_tokens` and `num_sequences` are filled in here.

  A non-finite loss or gradient leaves the whole state unchanged and sets `nonfinite` to 1.
  """
  sc = step_config
  group = hp.group_size
  parts = make_step_parts(objective, hp, student_config, optimizer, step_config,
                          teacher_config, constrain_rows, constrain_grads, learning_rate)

  def minibatch_update(params, opt_state, teacher_params, objective_state, rows, shared):
    n = sc.grad_accum_steps
    if n == 1:
      sums = parts.micro(params, teacher_params, constrain_rows({**shared, **rows}),
                         objective_state)
    else:
      init = parts.zeros(params, teacher_params, objective_state, _first_micro(rows, n, group),
                         shared)
      body = lambda acc, mb: (parts.accumulate(params, teacher_params, objective_state, mb,
                                               shared, acc), None)
      sums = jax.lax.scan(body, init, split_rows(rows, n, group))[0]
    return parts.apply(params, opt_state, sums)

  def train_step(state: TrainState, teacher_params, batch: dict):
    rows, shared, extra = parts.prepare(state.params, batch)
    params, opt_state = state.params, state.opt_state
    passes = []
    for _ in range(sc.ppo_epochs):
      if sc.ppo_minibatches == 1:
        params, opt_state, result = minibatch_update(
            params, opt_state, teacher_params, state.objective_state, rows, shared)
      else:
        def body(carry, mb_rows):
          p, o, result = minibatch_update(*carry, teacher_params, state.objective_state,
                                          mb_rows, shared)
          return (p, o), result
        (params, opt_state), result = jax.lax.scan(
            body, (params, opt_state), split_rows(rows, sc.ppo_minibatches, group))
      passes.append(result)
    return parts.finish(state, params, opt_state, passes, extra)

  return train_step


class HostPrograms(NamedTuple):
  """The compiled `StepParts` a host-driven step calls (built in cmdp.training.programs),
  and the teacher: `teacher_logits(teacher_params, inputs, input_mask)` takes a
  microbatch's rows on the student's devices and returns its logits there, computed on the
  teacher's. `accumulate(params, objective_state, rows, shared, sums)` and
  `zeros(params, objective_state, rows, shared)` take the microbatch's rows with its
  `teacher_logits`."""
  prepare: Callable
  select: Callable
  zeros: Callable
  accumulate: Callable
  apply: Callable
  finish: Callable
  teacher_logits: Callable


def make_host_train_step(programs_for: Callable[[int], HostPrograms],
                         step_config: StepConfig, group_size: int):
  """`train_step(state, teacher_params, batch) -> (state, metrics)` for a teacher on its
  own devices, driven from the host: the same `StepParts`, one compiled program each.

  Per microbatch (of each minibatch of each PPO epoch, as `make_train_step` splits them),
  the teacher's logits are computed on its devices, moved to the student's microbatch
  sharding and consumed by the compiled gradient of that microbatch, which adds into a
  carried sum; each minibatch then takes one compiled optimiser update, and one compiled
  `finish` updates the objective's state and gives the metrics. No `[B, L, V]` array of
  the whole batch exists: at most two microbatches' teacher logits are alive (the next one
  is computed while the student consumes the current one; before handing a microbatch to
  the student, the host waits for the student's previous gradient or update).

  `programs_for(micro_rows)` returns the compiled `HostPrograms` for microbatches of that
  many rows. The state is donated (by `finish`), as by the one-program step.
  """
  sc = step_config
  a, m = sc.grad_accum_steps, sc.ppo_minibatches

  def split(state: TrainState, teacher_params, batch: dict):
    """The compiled programs for this batch's microbatches (checks the batch splits)."""
    del state, teacher_params
    rows = batch["mask"].shape[0]
    if rows % (a * m * group_size):
      raise ValueError(f"batch of {rows} rows does not split into grad_accum_steps x "
                       f"ppo_minibatches = {a * m} parts of whole groups of {group_size}.")
    return programs_for(rows // (a * m))

  def train_step(state: TrainState, teacher_params, batch: dict):
    prog = split(state, teacher_params, batch)
    rows, shared, extra = prog.prepare(state.params, batch)
    micros = [[rows if a * m == 1 else prog.select(rows, j, k) for k in range(a)]
              for j in range(m)]
    params, opt_state = state.params, state.opt_state
    passes = []
    previous = None  # the student's last dispatched result (a gradient sum or an update)
    for _ in range(sc.ppo_epochs):
      results = []
      for j in range(m):
        sums = None
        for k in range(a):
          mb = micros[j][k]
          # The teacher works on this microbatch while the student finishes the last one.
          mb = dict(mb, teacher_logits=prog.teacher_logits(teacher_params, mb["inputs"],
                                                           mb["input_mask"]))
          if previous is not None:  # the last microbatch's logits are consumed: two alive
            jax.block_until_ready(previous)
          if sums is None:
            sums = prog.zeros(params, state.objective_state, mb, shared)
          sums = previous = prog.accumulate(params, state.objective_state, mb, shared, sums)
        params, opt_state, result = prog.apply(params, opt_state, sums)
        previous = params
        results.append(result)
      passes.append(results[0] if m == 1 else results)
    return prog.finish(state, params, opt_state, passes, extra)

  def lower_parts(state, teacher_params, batch) -> list:
    """`(name, lowered, args)` of each compiled student-side program a call runs, in
    order, for abstract (or concrete) arguments: each once, whatever its trip count (`a`
    microbatches x `m` minibatches x epochs). The teacher's program
    (`programs.teacher_logits` on one microbatch) is not among them."""
    prog = split(state, teacher_params, batch)
    out = []

    def lower(name, fn, *args):
      out.append((name, fn.lower(*args), args))
      return jax.eval_shape(fn, *args)
    rows, shared, extra = lower("prepare", prog.prepare, state.params, batch)
    mb = rows if a * m == 1 else lower("select", prog.select, rows, 0, 0)
    logits = jax.eval_shape(prog.teacher_logits, teacher_params, mb["inputs"],
                            mb["input_mask"])
    mb = dict(mb, teacher_logits=logits)
    sums = jax.eval_shape(prog.zeros, state.params, state.objective_state, mb, shared)
    sums = lower("accumulate", prog.accumulate, state.params, state.objective_state, mb,
                 shared, sums)
    params, opt_state, result = lower("apply", prog.apply, state.params, state.opt_state, sums)
    passes = [result if m == 1 else [result] * m] * sc.ppo_epochs
    lower("finish", prog.finish, state, params, opt_state, passes, extra)
    return out

  train_step.lower_parts = lower_parts
  return train_step


def make_grad_fn(objective: Objective, hp: ObjectiveConfig,
                 student_config: models.ModelConfig,
                 teacher_config: models.ModelConfig | None,
                 teacher_logits_dtype: str = "float32", response_start: int = 0,
                 prefixes: dict | None = None, params_grad: bool = True):
  """`grad_fn(params, teacher_params, microbatch, objective_state) -> (loss, metrics,
  signal [B], grads)`: the teacher's logits (from `teacher_params` under stop_gradient, or
  the microbatch's own `teacher_logits`), the student's raw logits and the registered
  objective's `loss_fn` on both, all over the `response_window` from `response_start` on
  (`prefixes`: `models.forward`'s prefix-sharing arguments, `StepConfig.prefixes`); the
  loss's gradient with respect to the params
  (None when `params_grad` is False: only the forward passes and the loss's gradient with
  respect to the logits are computed), and `signal`, which rows carry any gradient: a
  nonzero gradient of the objective's loss with respect to some of the row's logits.

  The gradient runs through the logits: `d loss / d params = (d logits / d params)^T
  g` with `g = d loss / d logits`, the same chain rule `jax.grad` of the composition
  applies, so the row signal is read off the gradient itself, for every objective alike (a
  group-relative advantage that is all zero, a settled token, a pathwise cost term,
  an entropy bonus: no objective needs its own rule).
  """
  prefixes = prefixes or {}

  def grad_fn(params, teacher_params, batch, objective_state):
    teacher, window = window_teacher_logits(teacher_config, teacher_logits_dtype,
                                            response_start, teacher_params, batch, prefixes)
    student = lambda p: student_window_logits(student_config, response_start, p, batch,
                                              prefixes)
    if params_grad:
      logits, pullback = jax.vjp(student, params)
    else:
      logits = jax.lax.stop_gradient(student(params))
    (loss, metrics), g = jax.value_and_grad(objective.loss_fn, has_aux=True)(
        logits, teacher, window, hp, objective_state)
    signal = jnp.any(g != 0, axis=tuple(range(1, g.ndim)))
    grads = pullback(g)[0] if params_grad else None
    return loss, metrics, signal, grads
  return grad_fn


# Metrics that exist only where they are defined: NaN otherwise, and then not logged.
OPTIONAL_METRICS = ("cost_before_flag", "update_ratio")


def derived_metrics(metrics: dict, update_norm, state: TrainState,
                    learning_rate: Callable | None) -> dict:
  """Ratios of the step's measurements, formed inside the step (NaN where undefined):

  cost_before_flag: `violating_cost_before_flag / violating_cost`, the share of the
    violating responses' cost before the Sauté flag fires (undefined when none violates);
  update_ratio: `update_norm / (lr sqrt(P))`, `P` the student's parameters and `lr` the
    schedule's rate at the optimiser's update count (its first update of the step; the
    count does not move on a skipped update): 1 when Adam moves every weight by about lr
    (its first step, or a steady gradient sign), about `sqrt((1 - b1) / (1 + b1))` = 0.23
    at `b1 = 0.9` under pure noise (undefined at lr = 0).
  """
  out = {}
  if "violating_cost" in metrics:
    v = metrics["violating_cost"]
    out["cost_before_flag"] = jnp.where(
        v > 0, metrics["violating_cost_before_flag"] / jnp.where(v > 0, v, 1.0), jnp.nan)
  if learning_rate is not None:
    counts = [s.count for s in jax.tree.leaves(
        state.opt_state, is_leaf=lambda x: isinstance(x, optax.ScaleByScheduleState))
              if isinstance(s, optax.ScaleByScheduleState)]
    lr = learning_rate(counts[0] if counts else state.step)
    root_p = sum(x.size for x in jax.tree.leaves(state.params)) ** 0.5
    out["update_ratio"] = jnp.where(lr > 0, update_norm / (jnp.where(lr > 0, lr, 1.0) * root_p),
                                    jnp.nan)
  return out


def has_gradient(grads) -> jax.Array:
  """`[]` bool: some entry of the gradient pytree is nonzero (exactly; a global norm can
  underflow to 0 for a tiny but nonzero gradient)."""
  leaves = [jnp.any(g != 0) for g in jax.tree.leaves(grads)]
  return jnp.any(jnp.stack(leaves)) if leaves else jnp.zeros((), bool)


def signal_metrics(signal: jax.Array, batch: dict, group_size: int) -> dict:
  """Shares of the FULL batch (a microbatch holds whole groups, so the shares sum):
  `rows_with_gradient`, the rows whose logits get a nonzero gradient of the loss, and
  `groups_with_contrast`, the groups with at least one such row (a group with none adds
  nothing to the update)."""
  flags = signal.astype(jnp.float32)
  rows = jnp.sum(flags) / batch["num_sequences"]
  groups = jnp.any(flags.reshape(-1, group_size) > 0, axis=-1).astype(jnp.float32)
  return dict(rows_with_gradient=rows,
              groups_with_contrast=jnp.sum(groups) * group_size / batch["num_sequences"])


def window_teacher_logits(teacher_config: models.ModelConfig | None,
                          teacher_logits_dtype: str, response_start: int, teacher_params,
                          batch: dict, prefixes: dict | None = None):
  """`(teacher logits or None, windowed batch)` (see `window_logits`)."""
  window = response_window(batch, response_start)
  teacher = window.get("teacher_logits")
  if teacher is None and teacher_config is not None:
    teacher = teacher_forward(teacher_config, teacher_logits_dtype, response_start,
                              teacher_params, batch, prefixes)
  if teacher is not None:
    teacher = jax.lax.stop_gradient(teacher).astype(jnp.float32)
  return teacher, window


def teacher_forward(teacher_config: models.ModelConfig, teacher_logits_dtype: str,
                    response_start: int, teacher_params, batch: dict,
                    prefixes: dict | None = None):
  """The teacher's logits `[B, L - response_start, V]` of the batch's `inputs`, in
  `teacher_logits_dtype`: what a batch brings as its own `teacher_logits`."""
  return models.forward(teacher_config, teacher_params, batch["inputs"], batch["input_mask"],
                        response_start, **(prefixes or {})).astype(
                            jnp.dtype(teacher_logits_dtype))


def student_window_logits(student_config: models.ModelConfig, response_start: int, params,
                          batch: dict, prefixes: dict | None = None):
  """The student's float32 logits over the response window (see `window_logits`)."""
  logits = models.forward(student_config, params, batch["inputs"], batch["input_mask"],
                          response_start, **(prefixes or {}))
  return logits.astype(jnp.float32)


def window_logits(student_config: models.ModelConfig,
                  teacher_config: models.ModelConfig | None, teacher_logits_dtype: str,
                  response_start: int, params, teacher_params, batch: dict,
                  prefixes: dict | None = None):
  """`(student logits, teacher logits or None, batch)` over the `response_window` from
  `response_start` on, both float32: the teacher's are the batch's own `teacher_logits`
  when it brings them, else its forward pass (`teacher_config`) in `teacher_logits_dtype`,
  under stop_gradient. Both forward passes share the prompt's columns as `prefixes` says
  (`models.forward`'s `shared_prefix`, `group_prefix`, `group_size`). Shared by the loss
  and the sequence scorer."""
  teacher, window = window_teacher_logits(teacher_config, teacher_logits_dtype,
                                          response_start, teacher_params, batch, prefixes)
  return (student_window_logits(student_config, response_start, params, batch, prefixes),
          teacher, window)


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
