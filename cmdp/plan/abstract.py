"""The run a config describes, with shapes instead of weights.

`abstract_experiment(config, devices)` returns a `cmdp.training.experiment.Experiment` whose
parameters are `jax.ShapeDtypeStruct`s placed (by sharding only) on the meshes the trainer
would build. Its compiled programs (`make_train_step`, and `cmdp.training.programs`'
`teacher_logits` and `sampler`) are the trainer's own, so the planner compiles exactly what
a run compiles. Nothing is loaded:
architectures come from presets, a local `config.json` / GGUF header, or the random-init
fields of the config.
"""
from __future__ import annotations

import functools
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from jax.sharding import NamedSharding, PartitionSpec as P

from cmdp import models, sharding
from cmdp.models import loading, presets
from cmdp.models.char_tokenizer import char_tokenizer
from cmdp.training import batch as batch_lib
from cmdp.training import config as config_lib
from cmdp.training import experiment as experiment_lib
from cmdp.training import models as model_lib
from cmdp.training import step as step_lib
from cmdp.training import trainer


def architecture(path: str, field: str) -> models.ModelConfig:
  """The architecture named by a model path, read without weights.

  `preset:NAME`; a local Hugging Face directory (its config.json) or .gguf file (its
  header); a hub id in the local Hugging Face cache; else the preset of a known hub id.

  Raises:
    ValueError naming `config.<field>` when none of these applies.
  """
  if presets.is_preset(path):
    return presets.get(path)
  try:
    local = loading.resolve_path(path)
  except FileNotFoundError:
    local = None
  if local and os.path.isfile(os.path.join(local, "config.json")):
    with open(os.path.join(local, "config.json")) as f:
      return models.ModelConfig.from_hf_dict(json.load(f))
  if local and local.endswith(".gguf"):
    import gguf  # pylint: disable=g-import-not-at-top
    return loading.gguf_config(gguf.GGUFReader(local))
  known = presets.for_hub_id(path)
  if known is not None:
    return known
  raise ValueError(
      f"config.{field}={path!r}: no config.json found for it on this machine and it is not a "
      f"known hub id. Name a preset instead ({', '.join(sorted(presets.PRESETS))}, as "
      "'preset:NAME') or download the model's config.json.")


def _tokenizer_size(config: ml_collections.ConfigDict) -> int:
  """Ids the tokenizer emits when known without files (the char tokenizer), else 0."""
  return len(char_tokenizer()) if config.tokenizer == "char" else 0


def _random_init(fields: ml_collections.ConfigDict, vocab: int, field: str) -> models.ModelConfig:
  kw = fields.to_dict()
  kw["vocab_size"] = kw["vocab_size"] or vocab
  if not kw["vocab_size"]:
    raise ValueError(f"config.{field}.vocab_size: a random-init model needs a vocabulary size; "
                     "set it or use config.tokenizer='char'.")
  return models.ModelConfig(**kw)


def model_configs(config: ml_collections.ConfigDict):
  """`(teacher, student)` ModelConfigs as `cmdp.training.models` would build them."""
  vocab = _tokenizer_size(config)
  t, s = config.teacher, config.student
  teacher = (architecture(t.path, "teacher.path") if t.path
             else _random_init(t.random_init, vocab, "teacher.random_init"))
  teacher_dtype, student_dtype = config_lib.param_dtypes(config)
  teacher = teacher.replace(dtype=t.dtype, param_dtype=teacher_dtype)
  if s.path:
    student = architecture(s.path, "student.path")
  elif s.cut_layers:
    student = teacher.replace(num_layers=len(tuple(s.cut_layers)))
  else:
    student = _random_init(s.random_init, teacher.vocab_size, "student.random_init")
  student = student.replace(dtype=s.dtype, param_dtype=student_dtype, remat=s.remat)
  t_model, s_model = model_lib.share_vocabulary(
      model_lib.LoadedModel(teacher, None), model_lib.LoadedModel(student, None), vocab)
  return t_model.config, s_model.config


def abstract_params(cfg: models.ModelConfig, mesh) -> Any:
  """ShapeDtypeStructs of `cfg`'s parameters, sharded by `sharding.param_specs`."""
  shapes = jax.eval_shape(functools.partial(models.init_params, cfg), jax.random.key(0))
  return place(shapes, sharding.param_specs(shapes, mesh, cfg), mesh)


def place(shapes: Any, specs: Any, mesh) -> Any:
  """Attaches `NamedSharding(mesh, spec)` to each ShapeDtypeStruct of `shapes`."""
  return jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=NamedSharding(mesh, s)),
      shapes, specs, is_leaf=lambda x: isinstance(x, P))


def abstract_experiment(config: ml_collections.ConfigDict, devices: list,
                        model_cfgs=None) -> experiment_lib.Experiment:
  """The trainer's `Experiment` for `config` with abstract (ShapeDtypeStruct) parameters.

  Args:
    config: an experiment config (validated here).
    devices: the devices of the target topology.
    model_cfgs: optional `(teacher, student)` ModelConfigs overriding `model_configs(config)`
      (the planner uses zero-layer variants to separate per-layer costs).

  Raises:
    ValueError naming the config field when the batch does not split over the mesh.
  """
  config_lib.validate(config)
  student_mesh, teacher_mesh = experiment_lib.build_meshes(config.mesh, devices)
  shards = student_mesh.shape["data"] * student_mesh.shape["fsdp"]
  if config.batch_size % shards:
    raise ValueError(f"config.batch_size={config.batch_size} must be a multiple of the mesh's "
                     f"data*fsdp={shards} (each device holds whole rows).")
  t_cfg, s_cfg = model_cfgs or model_configs(config)
  return experiment_lib.Experiment(
      config=config, student_mesh=student_mesh, teacher_mesh=teacher_mesh,
      teacher=model_lib.LoadedModel(t_cfg, abstract_params(t_cfg, teacher_mesh)),
      student=model_lib.LoadedModel(s_cfg, abstract_params(s_cfg, student_mesh)),
      tokenizer=None, train_examples=[], test_examples=[],
      hp=config_lib.objective_config(config))


def abstract_state(exp: experiment_lib.Experiment):
  """`(state, shardings)`: the train state as ShapeDtypeStructs and its NamedShardings."""
  def init(p):
    return step_lib.init_state(p, exp.optimizer, exp.objective, exp.hp,
                               jax.random.PRNGKey(exp.config.seed))
  shapes = jax.eval_shape(init, exp.student.params)
  shardings = trainer.state_shardings(exp, shapes)
  state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                       shapes, shardings)
  return state, shardings


def rows(exp: experiment_lib.Experiment, shape, dtype, mesh=None) -> jax.ShapeDtypeStruct:
  """A `[B, ...]` array split over the batch axes (a scalar-per-row array for 1-D)."""
  return jax.ShapeDtypeStruct(shape, dtype, sharding=exp.batch_sharding(mesh))


def rollout_model(exp: experiment_lib.Experiment) -> str | None:
  """Who samples each step: "student" (on-policy), "teacher" (sft_source=teacher), None."""
  if exp.objective.on_policy:
    return "student"
  return "teacher" if exp.config.rollout.sft_source == "teacher" else None


def sequence_length(exp: experiment_lib.Experiment) -> int:
  """Positions of a training batch: prompt + new tokens - 1, or sft_max_len - 1."""
  c = exp.config
  if rollout_model(exp) is None:
    return c.data.sft_max_len - 1
  return c.data.max_prompt_len + c.rollout.max_new_tokens - 1


def train_batch(exp: experiment_lib.Experiment) -> dict:
  """The train step's batch (`trainer.make_batch`'s fields) as sharded ShapeDtypeStructs.

  It never holds the teacher's logits: the teacher scores the batch inside the step, one
  microbatch at a time (on its own mesh too, see `cmdp.training.step.make_host_train_step`).
  """
  b, length = exp.config.batch_size, sequence_length(exp) + 1
  tokens = jax.ShapeDtypeStruct((b, length), jnp.int32)
  flags = jax.ShapeDtypeStruct((b, length), jnp.bool_)
  logprobs = jax.ShapeDtypeStruct((b, length), jnp.float32)
  shapes = jax.eval_shape(batch_lib.shift, tokens, flags, flags, logprobs)
  shapes["task_reward"] = jax.ShapeDtypeStruct((b,), jnp.float32)
  return {k: rows(exp, v.shape, v.dtype) for k, v in shapes.items()}
