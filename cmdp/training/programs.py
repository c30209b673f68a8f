"""Every compiled function of a run, and its signature, built in this one place.

Each program is a pure function from the layers below, jitted here with its in/out
shardings (from `cmdp.sharding`'s rules) and donated arguments:

| program | signature | shardings | donates |
| --- | --- | --- | --- |
| `train_step` | `(state, teacher_params, batch) -> (state, metrics)` | state: param rules; teacher: param rules on its mesh; batch rows over (data, fsdp) | state |
| `host_programs` | a teacher on its own mesh: the train step's parts (prepare, select, zeros, accumulate, apply, finish), driven per microbatch by `step.make_host_train_step` | as the train step; a microbatch's rows over (data, fsdp) or replicated | gradient sums; state |
| `teacher_logits` | `(teacher_params, inputs, input_mask) -> logits` (a teacher on its own mesh; a microbatch's rows, or evaluation's batch) | teacher mesh | - |
| `row_signal` | `(student_params, teacher_params, batch, objective_state) -> [B] bool`: rows whose logits get a nonzero gradient of the loss (dynamic sampling; with `keep_teacher_logits`, also the teacher's window logits) | rows over (data, fsdp) | - |
| `gather_rows` | `(arrays, rows) -> array`: rows of the arrays' concatenation (dynamic sampling's kept teacher logits) | rows over (data, fsdp) | - |
| `scorer` | `(student_params, teacher_params, batch) -> sequence scores` | student mesh | - |
| `sampler` | `(params, prompts, prompt_mask, rng) -> Rollout` (prefill + decode loop; prompts repeated group_size times inside) | `cmdp.rollout.make_sampler` on the mesh | - |
| `shift_batch` | `(tokens, attention_mask, action_mask[, logprobs]) -> batch` (rollout or reference sequences -> the step's fields) | rows over (data, fsdp) | - |

Inside the train step the microbatches are constrained to the batch sharding and the
gradients to the parameter layout (reduce-scattered over fsdp); every program is traced
under `sharding.activation_mesh`, so the model's activations follow the logical axis rules.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P

from cmdp import models, objectives, sharding
from cmdp.objectives import Objective, ObjectiveConfig
from cmdp.rollout import make_sampler
from cmdp.training import batch as batch_lib
from cmdp.training import step as step_lib


def abstract_params(cfg: models.ModelConfig):
  """The params' shapes, without allocating them."""
  return jax.eval_shape(functools.partial(models.init_params, cfg), jax.random.key(0))


def param_shardings(cfg: models.ModelConfig, mesh, params=None):
  """NamedShardings of a model's params on `mesh` (from its abstract shapes if not given)."""
  params = abstract_params(cfg) if params is None else params
  return sharding.named(mesh, sharding.param_specs(params, mesh, cfg))


def train_step(objective: Objective, hp: ObjectiveConfig, student_cfg: models.ModelConfig,
               optimizer, step_config: step_lib.StepConfig, mesh, state_shardings,
               teacher_cfg: models.ModelConfig | None, teacher_mesh=None,
               learning_rate=None):
  """The update `(state, teacher_params, batch) -> (state, metrics)` (`learning_rate`: the
  optimiser's schedule, for the step's `update_ratio`).

  A teacher on the student's mesh (`teacher_mesh` None or `mesh`): one jitted program, the
  teacher inside it, microbatch by microbatch. A teacher on a mesh of its own: the host
  loop of `step_lib.make_host_train_step` over the compiled parts of `host_programs`,
  which hands the teacher's logits over one microbatch at a time. `teacher_cfg` None: one
  program whose batch brings the teacher's logits (`teacher_logits`).
  """
  if teacher_cfg is not None and teacher_mesh is not None and teacher_mesh is not mesh:
    build = functools.partial(host_programs, objective, hp, student_cfg, optimizer,
                              step_config, mesh, state_shardings, teacher_cfg, teacher_mesh,
                              learning_rate=learning_rate)
    return step_lib.make_host_train_step(functools.lru_cache(maxsize=4)(build), step_config,
                                         hp.group_size)
  rows = NamedSharding(mesh, sharding.batch_spec())
  fn = step_lib.make_train_step(objective, hp, student_cfg, optimizer, step_config,
                                teacher_config=teacher_cfg,
                                constrain_rows=_row_constraint(mesh),
                                constrain_grads=_grad_constraint(state_shardings),
                                learning_rate=learning_rate)
  teacher_sh = (param_shardings(teacher_cfg, teacher_mesh or mesh) if teacher_cfg is not None
                else None)
  return jax.jit(sharding.on_mesh(fn, mesh), in_shardings=(state_shardings, teacher_sh, rows),
                 out_shardings=(state_shardings, NamedSharding(mesh, P())),
                 donate_argnums=(0,))


def _row_constraint(mesh):
  """Constrains a microbatch's row fields to the batch sharding (a microbatch smaller than
  the batch axes, or not a multiple, is left to XLA)."""
  rows = NamedSharding(mesh, sharding.batch_spec())
  shards = mesh.shape["data"] * mesh.shape["fsdp"]

  def constrain_rows(mb):
    return {k: (jax.lax.with_sharding_constraint(v, rows)
                if k in step_lib.ROW_FIELDS and v is not None and v.shape[0] % shards == 0
                else v) for k, v in mb.items()}
  return constrain_rows


def _grad_constraint(state_shardings):
  return lambda grads: jax.lax.with_sharding_constraint(grads, state_shardings.params)


def host_programs(objective: Objective, hp: ObjectiveConfig, student_cfg: models.ModelConfig,
                  optimizer, step_config: step_lib.StepConfig, mesh, state_shardings,
                  teacher_cfg: models.ModelConfig, teacher_mesh,
                  micro_rows: int, learning_rate=None) -> step_lib.HostPrograms:
  """The compiled `step_lib.StepParts` of an update whose teacher has a mesh of its own,
  for microbatches of `micro_rows` sequences (see `step_lib.make_host_train_step`).

  Shardings: the batch's rows over the batch axes; a microbatch's rows too, or replicated
  when they do not split over them (`sharding.rows_spec`), the same on the teacher's mesh;
  params, optimiser state and gradient sums in the param layout; scalars replicated.
  Donated: the gradient sums (`accumulate`, `apply`) and the state (`finish`).
  """
  parts = step_lib.make_step_parts(objective, hp, student_cfg, optimizer, step_config,
                                   teacher_config=None, constrain_rows=_row_constraint(mesh),
                                   constrain_grads=_grad_constraint(state_shardings),
                                   learning_rate=learning_rate)
  parts = step_lib.StepParts(*(sharding.on_mesh(f, mesh) for f in parts))
  rep = NamedSharding(mesh, P())
  rows = NamedSharding(mesh, sharding.batch_spec())
  micro = NamedSharding(mesh, sharding.rows_spec(micro_rows, mesh))
  st = state_shardings
  sums = (rep, rep, st.params)
  prepare = jax.jit(parts.prepare, in_shardings=(st.params, rows), out_shardings=(rows, rep, rep))
  select = jax.jit(parts.select, in_shardings=(rows, rep, rep), out_shardings=micro)
  zeros = jax.jit(lambda p, o, mb, sh: parts.zeros(p, None, o, mb, sh),
                  in_shardings=(st.params, st.objective_state, micro, rep), out_shardings=sums)
  accumulate = jax.jit(lambda p, o, mb, sh, acc: parts.accumulate(p, None, o, mb, sh, acc),
                       in_shardings=(st.params, st.objective_state, micro, rep, sums),
                       out_shardings=sums, donate_argnums=(4,))
  apply = jax.jit(parts.apply, in_shardings=(st.params, st.opt_state, sums),
                  out_shardings=(st.params, st.opt_state, rep), donate_argnums=(2,))
  finish = jax.jit(parts.finish, in_shardings=(st, st.params, st.opt_state, rep, rep),
                   out_shardings=(st, rep), donate_argnums=(0,))
  logits = teacher_logits(teacher_cfg, teacher_mesh, step_config.teacher_logits_dtype,
                          micro_rows, step_config.response_start,
                          **step_config.prefixes(hp.group_size))
  on_teacher = NamedSharding(teacher_mesh, sharding.rows_spec(micro_rows, teacher_mesh))

  def teacher(teacher_params, inputs, input_mask):
    inputs, input_mask = jax.device_put((inputs, input_mask), on_teacher)
    return jax.device_put(logits(teacher_params, inputs, input_mask), micro)
  return step_lib.HostPrograms(prepare=prepare, select=select, zeros=zeros,
                               accumulate=accumulate, apply=apply, finish=finish,
                               teacher_logits=teacher)


@functools.lru_cache(maxsize=16)
def teacher_logits(cfg: models.ModelConfig, mesh, dtype: str, rows: int | None = None,
                   logits_from: int = 0, shared_prefix: int = 0, group_prefix: int = 0,
                   group_size: int = 1):
  """`(teacher_params, inputs, input_mask) -> logits [B, L - logits_from, V]` on the
  teacher's mesh (only the response window is handed over; the prompt's columns are
  shared as `models.forward`'s `shared_prefix`, `group_prefix` and `group_size` say); rows
  over the batch axes, or (`rows` given and not splitting over them) replicated."""
  fn = lambda p, x, m: models.forward(cfg, p, x, m, logits_from,
                                      shared_prefix, group_prefix,
                                      group_size).astype(jnp.dtype(dtype))
  b = sharding.batch_spec() if rows is None else sharding.rows_spec(rows, mesh)
  return sharding.jit_sharded(
      fn, mesh, (sharding.param_specs(abstract_params(cfg), mesh, cfg), b, b), b)


@functools.lru_cache(maxsize=16)
def scorer(student_cfg: models.ModelConfig, teacher_cfg: models.ModelConfig, hp: ObjectiveConfig,
           teacher_dtype: str = "float32", response_start: int = 0,
           prefixes: tuple = ()):
  """`(student_params, teacher_params, batch) -> cmdp.objectives.sequence_scores` of the
  deployed student (the constraint's cost, satisfaction, KL, length per sequence), over
  the `step.response_window` from `response_start` on (sampler rollouts:
  max_prompt_len - 1), the prompt columns shared as `prefixes` says (`StepConfig.prefixes`'s
  items: the first `shared_prefix` columns run once per batch and, for a batch of prompt
  groups, the first `group_prefix` once per group of `group_size` rows, as the step runs
  them); a large vocabulary's terms chunked (`step.with_default_chunking`)."""
  hp = step_lib.with_default_chunking(hp, student_cfg)

  def fn(params, teacher_params, batch):
    logits, teacher, batch = step_lib.window_logits(student_cfg, teacher_cfg, teacher_dtype,
                                                    response_start, params, teacher_params,
                                                    batch, dict(prefixes))
    return objectives.sequence_scores(logits, teacher, batch, hp)
  return jax.jit(fn)


@functools.lru_cache(maxsize=16)
def row_signal(objective: str, hp: ObjectiveConfig, student_cfg: models.ModelConfig,
               teacher_cfg: models.ModelConfig | None, teacher_dtype: str, response_start: int,
               prefixes: tuple, mesh, keep_teacher_logits: bool = False):
  """`(student_params, teacher_params, batch, objective_state) -> signal [B] bool`: which
  rows give the objective's loss a nonzero gradient (`step.make_grad_fn`'s signal: the
  forward passes and the loss's gradient with respect to the logits, none through the
  model) of the registered `objective`, over the response window from `response_start` on,
  the prompt columns shared as the step shares them (`prefixes`: `StepConfig.prefixes`'s
  items). The batch is a whole step's batch shape; the PPO ratio is taken against the
  sampler's own log-probabilities (truncated importance weights of 1), which moves no
  gradient from zero to nonzero.

  `keep_teacher_logits` (a teacher given): returns `(signal, teacher_logits)`, the
  teacher's window logits in `teacher_dtype` (`step.teacher_forward`), rows over the batch
  axes, which a step's batch may bring as its own (dynamic sampling's
  `keep_teacher_logits`)."""
  hp = step_lib.with_default_chunking(hp, student_cfg)
  grad_fn = step_lib.make_grad_fn(objectives.get_objective(objective), hp, student_cfg,
                                  teacher_cfg, teacher_dtype, response_start, dict(prefixes),
                                  params_grad=False)

  def fn(params, teacher_params, batch, objective_state):
    batch = dict(batch)
    mask = batch["mask"]
    batch["num_tokens"] = jnp.maximum(mask.sum(), 1.0)
    batch["num_sequences"] = jnp.asarray(mask.shape[0], jnp.float32)
    if hp.tis_cap > 0:
      batch["trainer_logprobs"] = batch["old_logprobs"]
    if not keep_teacher_logits:
      return grad_fn(params, teacher_params, batch, objective_state)[2]
    batch["teacher_logits"] = step_lib.teacher_forward(
        teacher_cfg, teacher_dtype, response_start, teacher_params, batch, dict(prefixes))
    return grad_fn(params, None, batch, objective_state)[2], batch["teacher_logits"]
  rows = NamedSharding(mesh, sharding.batch_spec())
  return jax.jit(sharding.on_mesh(fn, mesh), out_shardings=rows)


@functools.lru_cache(maxsize=4)
def gather_rows(mesh):
  """`(arrays, rows) -> array`: rows `rows` `[n]` (indices into the concatenation of the
  tuple `arrays` along axis 0) on the device, rows over the batch axes; no host copy."""
  fn = lambda arrays, rows: jnp.take(jnp.concatenate(arrays), rows, axis=0)
  return jax.jit(fn, out_shardings=NamedSharding(mesh, sharding.batch_spec()))


@functools.lru_cache(maxsize=16)
def sampler(cfg: models.ModelConfig, mesh, max_new_tokens: int, temperature: float,
            top_k: int, top_p: float, greedy: bool, eos_ids: tuple, pad_id: int,
            group_size: int = 1, shared_prefix: int = 0):
  """The compiled sampler (prefill + decode loop) of `cmdp.rollout` on `mesh`; with
  `group_size` > 1 it takes each prompt once and samples it `group_size` times (the rows
  are repeated inside the program; prompts sharded by `Sampler.prompt_spec`); the first
  `shared_prefix` prompt columns are prefilled once."""
  return make_sampler(cfg, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                      top_p=top_p, greedy=greedy, eos_ids=eos_ids, pad_id=pad_id, mesh=mesh,
                      repeat=group_size, shared_prefix=shared_prefix)


@functools.lru_cache(maxsize=16)
def shift_batch(mesh, with_logprobs: bool):
  """`(tokens, attention_mask, action_mask[, logprobs]) -> batch`: `[B, T]` sequences (a
  rollout's, or reference sequences) -> the train step's `[B, T-1]` fields
  (`cmdp.training.batch.shift`; without logprobs, `old_logprobs` are zeros). Rows over the
  batch axes, in and out."""
  rows = NamedSharding(mesh, sharding.batch_spec())
  if with_logprobs:
    fn = batch_lib.shift
  else:
    fn = lambda tokens, attention_mask, action_mask: batch_lib.shift(tokens, attention_mask,
                                                                     action_mask)
  return jax.jit(fn, in_shardings=rows, out_shardings=rows)
