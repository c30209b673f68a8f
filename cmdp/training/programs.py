"""Every compiled function of a run, and its signature, built in this one place.

Each program is a pure function from the layers below, jitted here with its in/out
shardings (from `cmdp.sharding`'s rules) and donated arguments:

| program | signature | shardings | donates |
| --- | --- | --- | --- |
| `train_step` | `(state, teacher_params, batch) -> (state, metrics)` | state: param rules; teacher: param rules on its mesh; batch rows over (data, fsdp) | state |
| `teacher_logits` | `(teacher_params, inputs, input_mask) -> logits` (a teacher on its own mesh) | teacher mesh | - |
| `scorer` | `(student_params, teacher_params, batch) -> sequence scores` | student mesh | - |
| `sampler` | `(params, prompts, prompt_mask, rng) -> Rollout` (prefill + decode loop) | `cmdp.rollout.make_sampler` on the mesh | - |

Inside the train step the microbatches are constrained to the batch sharding and the
gradients to the parameter layout.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P

from cmdp import models, objectives, sharding
from cmdp.objectives import Objective, ObjectiveConfig
from cmdp.rollout import make_sampler
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
               teacher_cfg: models.ModelConfig | None, teacher_mesh=None):
  """The jitted update. With `teacher_cfg` (a teacher on the student's mesh) the teacher
  runs inside the step, microbatch by microbatch; without, the batch brings its logits."""
  rows = NamedSharding(mesh, sharding.batch_spec())
  shards = mesh.shape["data"] * mesh.shape["fsdp"]
  grads_sharding = state_shardings.params

  def constrain_rows(mb):
    # A microbatch smaller than the batch axes (or not a multiple) is left to XLA.
    return {k: (jax.lax.with_sharding_constraint(v, rows)
                if k in step_lib.ROW_FIELDS and v is not None and v.shape[0] % shards == 0
                else v) for k, v in mb.items()}

  def constrain_grads(grads):
    return jax.lax.with_sharding_constraint(grads, grads_sharding)

  fn = step_lib.make_train_step(objective, hp, student_cfg, optimizer, step_config,
                                teacher_config=teacher_cfg, constrain_rows=constrain_rows,
                                constrain_grads=constrain_grads)
  teacher_sh = (param_shardings(teacher_cfg, teacher_mesh or mesh) if teacher_cfg is not None
                else None)
  return jax.jit(fn, in_shardings=(state_shardings, teacher_sh, rows),
                 out_shardings=(state_shardings, NamedSharding(mesh, P())),
                 donate_argnums=(0,))


@functools.lru_cache(maxsize=16)
def teacher_logits(cfg: models.ModelConfig, mesh, dtype: str):
  """`(teacher_params, inputs, input_mask) -> logits [B, L, V]` on the teacher's mesh."""
  fn = lambda p, x, m: models.forward(cfg, p, x, m).astype(jnp.dtype(dtype))
  b = sharding.batch_spec()
  return sharding.jit_sharded(
      fn, mesh, (sharding.param_specs(abstract_params(cfg), mesh, cfg), b, b), b)


@functools.lru_cache(maxsize=16)
def scorer(student_cfg: models.ModelConfig, teacher_cfg: models.ModelConfig, hp: ObjectiveConfig,
           teacher_dtype: str = "float32"):
  """`(student_params, teacher_params, batch) -> cmdp.objectives.sequence_scores` of the
  deployed student (the constraint's cost, satisfaction, KL, length per sequence)."""
  def fn(params, teacher_params, batch):
    teacher = batch.get("teacher_logits")
    if teacher is None:
      teacher = models.forward(teacher_cfg, teacher_params, batch["inputs"],
                               batch["input_mask"]).astype(jnp.dtype(teacher_dtype))
    logits = models.forward(student_cfg, params, batch["inputs"], batch["input_mask"])
    return objectives.sequence_scores(logits.astype(jnp.float32), teacher.astype(jnp.float32),
                                      batch, hp)
  return jax.jit(fn)


@functools.lru_cache(maxsize=16)
def sampler(cfg: models.ModelConfig, mesh, max_new_tokens: int, temperature: float,
            top_k: int, top_p: float, greedy: bool, eos_ids: tuple, pad_id: int):
  """The compiled sampler (prefill + decode loop) of `cmdp.rollout` on `mesh`."""
  return make_sampler(cfg, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                      top_p=top_p, greedy=greedy, eos_ids=eos_ids, pad_id=pad_id, mesh=mesh)
