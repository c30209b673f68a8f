"""FSDP is data parallelism with sharded weights (8 CPU devices): the train step and the
sampler on fsdp meshes give one device's numbers, activations stay split by rows, and the
parameters and Adam moments take an eighth of a device each."""
import functools
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from cmdp import models, rollout, sharding
from cmdp.objectives import ObjectiveConfig, get_objective
from cmdp.rollout import sampler as sampler_lib
from cmdp.training import batch as batch_lib
from cmdp.training import programs, trainer
from cmdp.training import step as step_lib

STUDENT = models.ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
                             num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8)
TEACHER = STUDENT.replace(num_layers=3, intermediate_size=96)
HP = ObjectiveConfig(group_size=2, budget=2.0)
LR = 0.1
B, T = 16, 12


def _state_shardings(mesh, state):
  exp = types.SimpleNamespace(student_mesh=mesh, student=types.SimpleNamespace(config=STUDENT))
  return trainer.state_shardings(exp, state)


def _batch():
  rng = np.random.default_rng(0)
  pad = rng.integers(0, 4, B)
  attention = np.arange(T + 1)[None] >= pad[:, None]
  tokens = np.where(attention, rng.integers(1, 64, (B, T + 1)), 0).astype(np.int32)
  action = attention & (np.arange(T + 1)[None] >= 6)
  logprobs = np.where(action, -rng.uniform(0.5, 3.0, (B, T + 1)), 0.0).astype(np.float32)
  batch = batch_lib.shift(tokens, attention, action, logprobs)
  batch["task_reward"] = rng.integers(0, 2, B).astype(np.float32)
  return {k: np.asarray(v) for k, v in batch.items()}


def _run(mesh, objective="cmdp"):
  """Two updates (2 microbatches each) on `mesh`: the losses, the first update's gradient
  (plain SGD's first step is -lr x gradient) and the parameters after both."""
  optimizer = optax.sgd(LR, momentum=0.9)  # Adam's first steps are lr x sign(gradient),
  # which turns rounding noise in near-zero gradient entries into whole steps
  objective = get_objective(objective)
  params = models.init_params(STUDENT, jax.random.key(0))
  params = jax.tree.map(lambda x: x * 10 if x.ndim >= 2 else x, params)  # logits of order 1
  state = step_lib.init_state(params, optimizer, objective, HP, jax.random.key(2))
  shardings = _state_shardings(mesh, state)
  state = jax.device_put(state, shardings)
  teacher = sharding.shard_params(models.init_params(TEACHER, jax.random.key(1)), mesh,
                                  TEACHER)
  batch = jax.device_put(_batch(), NamedSharding(mesh, sharding.batch_spec()))
  step = programs.train_step(objective, HP, STUDENT, optimizer,
                             step_lib.StepConfig(grad_accum_steps=2), mesh, shardings, TEACHER)
  losses, states = [], [jax.tree.map(np.asarray, state.params)]  # the step donates it
  for _ in range(2):
    state, metrics = step(state, teacher, batch)
    losses.append(float(metrics["loss"]))
    states.append(jax.tree.map(np.asarray, state.params))
  grads = jax.tree.map(lambda a, b: (a - b) / LR, *states[:2])
  return dict(losses=losses, grads=grads, params=state.params)


@functools.lru_cache(maxsize=1)
def _one_device():
  return _run(sharding.make_mesh(1, 1, 1, jax.devices()[:1]))


AXES = [dict(data=1, fsdp=8), dict(data=2, fsdp=4), dict(data=1, fsdp=4, tensor=2)]
IDS = ["fsdp8", "data2_fsdp4", "fsdp4_tensor2"]


@pytest.mark.parametrize("axes", AXES, ids=IDS)
def test_sharded_step_equals_one_device(axes):
  """The losses, the first update's gradient and the parameters after two updates (stored
  in the parameter layout, split over fsdp), against the same step on one device."""
  mesh = sharding.make_mesh(**axes)
  got, want = _run(mesh), _one_device()
  # cmdp's loss here is its boundary term: the kernel k_h(C - d) reads C / h = 10 C / d, so
  # the cost's float32 summation order moves the loss by ~3e-5 of itself (measured, fsdp8).
  np.testing.assert_allclose(got["losses"], want["losses"], rtol=1e-4)
  # Splitting the batch changes float32 summation order: gradients move by up to ~3e-4 of
  # their largest entry, the same at data=8 (measured) as on these meshes.
  close = lambda g, w: np.testing.assert_allclose(g, w, atol=2e-3 * np.abs(w).max())
  for g, w in zip(jax.tree.leaves(got["grads"]), jax.tree.leaves(want["grads"])):
    close(g, w)
  specs = sharding.param_specs(got["params"], mesh, STUDENT)
  for g, w, spec in zip(jax.tree.leaves(got["params"]), jax.tree.leaves(want["params"]),
                        jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, P))):
    close(np.asarray(g), np.asarray(w))
    assert g.sharding.spec == spec


@pytest.mark.parametrize("axes", AXES, ids=IDS)
def test_sharded_sampler_equals_one_device(axes, monkeypatch):
  """Sampled (temperature 1) tokens and their log-probs, same key; on the mesh the prompts
  are prefilled in chunks of columns (at most 8 prompt tokens per device: 2 passes of 3
  columns, or 3 of 2 at fsdp=4), on one device in one pass."""
  params = jax.tree.map(lambda x: x * 10 if x.ndim >= 2 else x,
                        models.init_params(STUDENT, jax.random.key(0)))
  batch = _batch()
  tokens, mask = batch["inputs"][:, :6], batch["input_mask"][:, :6]
  kw = dict(max_new_tokens=6, temperature=1.0)
  want = rollout.sample(STUDENT, params, tokens, mask, jax.random.key(5), **kw)
  mesh = sharding.make_mesh(**axes)
  monkeypatch.setattr(sampler_lib, "PREFILL_TOKENS_PER_DEVICE", 8)
  assert sampler_lib.prefill_chunk(sampler_lib.rows_per_device(B, mesh), 6) < 6
  got = rollout.make_sampler(STUDENT, mesh=mesh, **kw)(
      sharding.shard_params(params, mesh, STUDENT), tokens, mask, jax.random.key(5))
  np.testing.assert_array_equal(got.tokens, want.tokens)
  np.testing.assert_allclose(got.logprobs, want.logprobs, atol=1e-4)


def _activation_temp(axes) -> int:
  """Temporaries of the forward and backward of a model whose activations dominate (64
  wide, 512 positions, 16 rows: 2 per device)."""
  cfg = STUDENT.replace(vocab_size=128, hidden_size=64, intermediate_size=128, num_layers=2)
  mesh = sharding.make_mesh(**axes)
  params = jax.eval_shape(functools.partial(models.init_params, cfg), jax.random.key(0))
  specs = sharding.param_specs(params, mesh, cfg)
  rows = sharding.batch_spec()
  loss = lambda p, x: jnp.mean(models.forward(cfg, p, x) ** 2)
  fn = sharding.jit_sharded(jax.grad(loss), mesh, (specs, rows), specs)
  tokens = jax.ShapeDtypeStruct((16, 512), jnp.int32)
  return fn.lower(params, tokens).compile().memory_analysis().temp_size_in_bytes


def test_fsdp_activations_are_split_by_rows_like_data_parallelism():
  data, fsdp = _activation_temp(dict(data=8)), _activation_temp(dict(data=1, fsdp=8))
  assert fsdp <= 1.1 * data, (fsdp, data)


def test_fsdp_stores_an_eighth_of_the_params_and_adam_state():
  """Per-device bytes of the student's parameters and Adam moments at fsdp=8: at most an
  eighth of one device's, plus the norm scales (replicated, three copies: param, mu, nu)."""
  objective, optimizer = get_objective("cmdp"), optax.adam(1e-2)
  cfg = STUDENT.replace(hidden_size=64, intermediate_size=128, vocab_size=128)
  params = jax.eval_shape(functools.partial(models.init_params, cfg), jax.random.key(0))
  state = jax.eval_shape(lambda p: step_lib.init_state(p, optimizer, objective, HP,
                                                       jax.random.key(1)), params)
  mesh = sharding.make_mesh(data=1, fsdp=8)
  exp = types.SimpleNamespace(student_mesh=mesh, student=types.SimpleNamespace(config=cfg))
  shardings = trainer.state_shardings(exp, state)
  trees = (state.params, state.opt_state)
  whole = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(trees))
  per_device = sum(np.prod(s.shard_shape(x.shape)) * x.dtype.itemsize for x, s in zip(
      jax.tree.leaves(trees), jax.tree.leaves((shardings.params, shardings.opt_state))))
  norms = 3 * 4 * (2 * cfg.num_layers * cfg.hidden_size + cfg.hidden_size)
  assert per_device <= whole / 8 + norms, (per_device, whole / 8, norms)
  assert per_device >= whole / 8


def test_frozen_teacher_is_stored_in_its_compute_dtype():
  """`teacher.param_dtype` "" stores a bfloat16 teacher in bfloat16; the student keeps
  float32 master weights; `shard_params` stores what the config says."""
  from cmdp.training import config as config_lib
  c = config_lib.base_config()
  c.teacher.dtype = c.student.dtype = "bfloat16"
  assert config_lib.param_dtypes(c) == ("bfloat16", "float32")
  c.teacher.param_dtype = "float32"
  assert config_lib.param_dtypes(c) == ("float32", "float32")
  mesh = sharding.make_mesh(data=1, fsdp=8)
  cfg = TEACHER.replace(dtype="bfloat16", param_dtype="bfloat16")
  params = models.init_params(cfg.replace(param_dtype="float32"), jax.random.key(0))
  stored = sharding.shard_params(params, mesh, cfg)
  assert {x.dtype for x in jax.tree.leaves(stored)} == {jnp.dtype(jnp.bfloat16)}
  np.testing.assert_array_equal(
      np.asarray(stored["lm_head"]["kernel"], np.float32),
      np.asarray(params["lm_head"]["kernel"].astype(jnp.bfloat16), np.float32))
  assert {x.dtype for x in jax.tree.leaves(models.init_params(cfg, jax.random.key(0)))} == {
      jnp.dtype(jnp.bfloat16)}
