"""The update program: memory from XLA's own analysis, PPO epochs, sampler-trainer mismatch,
and the host-driven step of a teacher on its own devices."""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jax.sharding import NamedSharding, PartitionSpec as P

from cmdp import models, sharding
from cmdp.objectives import ObjectiveConfig, get_objective
from cmdp.training import optimizer as optimizer_lib
from cmdp.training import programs
from cmdp.training import step as step_lib
from cmdp.training import trainer, experiment
from tests.training.tiny import tiny_config

B, L, V = 16, 64, 16_384
CFG = models.ModelConfig(vocab_size=V, hidden_size=64, intermediate_size=128, num_layers=1,
                         num_heads=2, num_kv_heads=1, head_dim=32)


@functools.lru_cache(maxsize=None)
def _logits_dominated_step(grad_accum_steps):
  """The compiled cmdp step of a 1-layer, 64-wide student and teacher over a 16k
  vocabulary: the [B, L, V] logits dominate its memory."""
  cfg = CFG
  hp = ObjectiveConfig(group_size=2, budget=5.0)
  objective = get_objective("cmdp")
  optimizer = optax.adam(1e-3)
  fn = step_lib.make_train_step(objective, hp, cfg, optimizer,
                                step_lib.StepConfig(grad_accum_steps=grad_accum_steps),
                                teacher_config=cfg)
  params = jax.eval_shape(lambda: models.init_params(cfg, jax.random.key(0)))
  state = jax.eval_shape(lambda p: step_lib.init_state(p, optimizer, objective, hp,
                                                       jax.random.key(1)), params)
  spec = lambda shape, dtype: jax.ShapeDtypeStruct(shape, dtype)
  batch = dict(inputs=spec((B, L), jnp.int32), targets=spec((B, L), jnp.int32),
               input_mask=spec((B, L), bool), mask=spec((B, L), jnp.float32),
               old_logprobs=spec((B, L), jnp.float32), task_reward=spec((B,), jnp.float32))
  return jax.jit(fn).lower(state, params, batch).compile()


def test_microbatches_bound_the_step_memory():
  """The teacher runs inside the accumulation scan: with 4 microbatches the compiled
  step's temporaries are at most a third of those with one (XLA's memory analysis)."""
  one = _logits_dominated_step(1).memory_analysis().temp_size_in_bytes
  four = _logits_dominated_step(4).memory_analysis().temp_size_in_bytes
  logits = B * L * V * 4
  assert one > 2 * logits  # student and teacher logits of the whole batch
  assert four <= one / 3, (four, one)


def _tiny_step(tmp_path, **overrides):
  config = tiny_config(objective="cmdp", **overrides)
  exp = experiment.build(config)
  state, shardings = trainer.create_state(exp, exp.student.params)
  batch, _ = trainer.make_batch(exp, state.params, exp.train_examples[:4],
                                jax.random.PRNGKey(3), True)
  return exp, state, shardings, batch


def test_a_perturbed_sampler_is_measured_and_corrected(tmp_path):
  """Sampler log-probs shifted by +0.3 on every token: the step reports |delta| = 0.3, the
  k3 KL e^-0.3 - 1 + 0.3, and truncated importance weights min(e^-0.3, cap)."""
  exp, state, shardings, batch = _tiny_step(tmp_path, **{"loss.tis_cap": 2.0})
  mask = np.asarray(batch["mask"])
  clean = exp.make_train_step(exp.hp, shardings)
  _, exact = clean(jax.tree.map(jnp.copy, state), exp.step_teacher_params, batch)
  assert float(exact["mismatch_abs_logprob"]) < 1e-4
  perturbed = dict(batch, old_logprobs=batch["old_logprobs"] + 0.3 * batch["mask"])
  _, m = clean(state, exp.step_teacher_params, perturbed)
  assert float(m["mismatch_abs_logprob"]) == pytest.approx(0.3, rel=1e-3)
  assert float(m["mismatch_k3"]) == pytest.approx(np.exp(-0.3) - 1 + 0.3, rel=1e-2)
  assert float(m["tis_weight_mean"]) == pytest.approx(np.exp(-0.3), rel=1e-3)
  assert mask.sum() > 0


def test_ppo_epochs_make_the_ratio_and_the_clip_act(tmp_path):
  """Several updates per rollout: the later passes see ratios away from 1 (clipped at
  a large learning rate), while the first pass is on-policy."""
  # A penalty on every violated token's cost, so the groups have contrast (under the
  # terminal penalty this batch, every sample over d, carries no signal at all).
  exp, state, shardings, batch = _tiny_step(
      tmp_path, ppo_epochs=3, ppo_minibatches=2,
      **{"optimizer.learning_rate": 0.05, "loss.penalty": "scaled"})
  _, m = exp.make_train_step(exp.hp, shardings)(state, exp.step_teacher_params, batch)
  assert float(m["mismatch_abs_logprob"]) < 1e-4  # measured before the first update
  assert float(m["approx_kl_old_last_epoch"]) > 1e-4
  assert float(m["clip_fraction_last_epoch"]) > 0.0
  assert float(m["nonfinite"]) == 0.0


def test_a_teacher_on_its_own_devices_never_hands_over_the_whole_batch():
  """The host-driven step of a teacher on its own device, 4 microbatches: the teacher's
  program returns one microbatch's logits, no compiled part takes or makes the batch's
  [B, L, V] logits, and the gradient part's temporaries follow the microbatch as the
  one-program step's do (XLA's memory analysis)."""
  hp = ObjectiveConfig(group_size=2, budget=5.0)
  objective, optimizer = get_objective("cmdp"), optax.adam(1e-3)
  student_mesh, teacher_mesh = (sharding.make_mesh(1, 1, 1, [d]) for d in jax.devices()[:2])
  on = lambda mesh, x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                            sharding=NamedSharding(mesh, P()))
  params = jax.eval_shape(lambda: models.init_params(CFG, jax.random.key(0)))
  state = jax.eval_shape(lambda p: step_lib.init_state(p, optimizer, objective, hp,
                                                       jax.random.key(1)), params)
  state = jax.tree.map(functools.partial(on, student_mesh), state)
  state_shardings = jax.tree.map(lambda x: x.sharding, state)
  spec = lambda shape, dtype: on(student_mesh, jax.ShapeDtypeStruct(shape, dtype))
  batch = dict(inputs=spec((B, L), jnp.int32), targets=spec((B, L), jnp.int32),
               input_mask=spec((B, L), bool), mask=spec((B, L), jnp.float32),
               old_logprobs=spec((B, L), jnp.float32), task_reward=spec((B,), jnp.float32))
  step = programs.train_step(objective, hp, CFG, optimizer,
                             step_lib.StepConfig(grad_accum_steps=4), student_mesh,
                             state_shardings, CFG, teacher_mesh)
  logits = B * L * V * 4
  teacher = programs.teacher_logits(CFG, teacher_mesh, "float32", B // 4)
  inputs = on(teacher_mesh, jax.ShapeDtypeStruct((B // 4, L), jnp.int32))
  out = teacher.lower(jax.tree.map(functools.partial(on, teacher_mesh), params), inputs,
                      on(teacher_mesh, jax.ShapeDtypeStruct((B // 4, L), bool)))
  assert out.compile().memory_analysis().output_size_in_bytes == logits // 4
  one = _logits_dominated_step(1).memory_analysis().temp_size_in_bytes
  parts = {}
  for name, lowered, args in step.lower_parts(state, params, batch):
    shapes = [np.shape(x) for x in jax.tree.leaves((args, lowered.out_info))]
    assert (B, L, V) not in shapes, name
    assert (B // 4, L, V) in shapes or name != "accumulate"
    parts[name] = lowered.compile().memory_analysis()
  assert set(parts) == {"prepare", "select", "accumulate", "apply", "finish"}
  for name, m in parts.items():  # params, gradient sums, one microbatch's logits at most
    assert m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes < logits
  assert parts["accumulate"].temp_size_in_bytes <= one / 3


def _disjoint(**overrides):
  """The tiny config with the teacher on the 4 devices the student's (data 2 x tensor 2)
  mesh does not use, 2 microbatches."""
  return tiny_config(objective="cmdp", grad_accum_steps=2, **{
      "mesh.teacher_disjoint": True, "mesh.data": 2, "mesh.tensor": 2}, **overrides)


@pytest.fixture(scope="module")
def disjoint():
  exp = experiment.build(_disjoint())
  state, shardings = trainer.create_state(exp, exp.student.params)
  batch, _ = trainer.make_batch(exp, state.params, exp.train_examples[:4],
                                jax.random.PRNGKey(3), True)
  return exp, state, shardings, batch


@pytest.mark.parametrize("overrides", [{}, {"ppo_epochs": 2, "ppo_minibatches": 2}],
                         ids=["accumulation", "ppo"])
def test_a_teacher_on_its_own_devices_gives_the_inside_step(disjoint, monkeypatch, overrides):
  """The host-driven step (the teacher's logits computed on its devices and handed over
  per microbatch) gives the loss, metrics and parameters of the one-program step with the
  teacher inside it, on the same batch and state; no [B, L, V] array of the batch exists."""
  exp, state, shardings, batch = disjoint
  exp = dataclasses.replace(exp, config=_disjoint(**overrides))
  assert not exp.teacher_inside_step and "teacher_logits" not in batch
  b, length = batch["inputs"].shape
  calls, whole = [], []
  real = programs.teacher_logits

  def recording(*args, **kwargs):
    fn = real(*args, **kwargs)

    def call(params, inputs, input_mask):
      calls.append(inputs.shape)
      whole.extend(x.shape for x in jax.live_arrays() if x.ndim == 3 and x.shape[0] == b)
      return fn(params, inputs, input_mask)
    return call
  monkeypatch.setattr(programs, "teacher_logits", recording)
  host = exp.make_train_step(exp.hp, shardings)
  teacher_here = sharding.shard_params(jax.device_get(exp.teacher.params), exp.student_mesh,
                                       exp.teacher.config)
  inside = programs.train_step(exp.objective, exp.hp, exp.student.config, exp.optimizer,
                               exp.step_config, exp.student_mesh, shardings,
                               exp.teacher.config, learning_rate=optimizer_lib.
                               learning_rate_schedule(exp.config.optimizer,
                                                      exp.config.num_steps))
  want_state, want = inside(jax.tree.map(jnp.copy, state), teacher_here, batch)
  got_state, got = host(jax.tree.map(jnp.copy, state), exp.step_teacher_params, batch)
  c = exp.config
  parts = c.grad_accum_steps * c.ppo_minibatches
  assert calls == [(b // parts, length)] * (parts * c.ppo_epochs)
  assert not whole, whole
  assert set(got) == set(want)
  for key, value in want.items():
    assert float(got[key]) == pytest.approx(float(value), rel=1e-5, abs=1e-7, nan_ok=True), key
  assert int(got_state.step) == int(want_state.step) == 1
  for g, w in zip(jax.tree.leaves(got_state), jax.tree.leaves(want_state)):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("objective, overrides", [
    # Without the boundary term this batch's first minibatch has no gradient, so the second
    # minibatch's KL rows are scored by the params the scorer reads (the quantiles below).
    ("cmdp", {"loss.tis_cap": 2.0, "ppo_epochs": 2, "ppo_minibatches": 2,
              "loss.boundary_width": 0.0}),
    ("gkd", {}),
    ("dual_lagrangian", {"grad_accum_steps": 2})])
def test_logits_over_the_response_window_give_the_whole_step(objective, overrides):
  """Rollouts put every response after the max_prompt_len prompt slots, so the step
  computes logits only from there (`StepConfig.response_start`): its loss, metrics and
  parameters equal the step over every position, and so do the scorer's figures."""
  exp = experiment.build(tiny_config(objective=objective, **overrides))
  state, shardings = trainer.create_state(exp, exp.student.params)
  batch, _ = trainer.make_batch(exp, state.params, exp.train_examples[:4],
                                jax.random.PRNGKey(3), True)
  start = exp.step_config.response_start
  assert start == exp.config.data.max_prompt_len - 1 > 0
  assert float(np.asarray(batch["mask"])[:, :start].sum()) == 0.0
  whole = dataclasses.replace(exp.step_config, response_start=0)
  results = []
  for sc in (exp.step_config, whole):
    fn = programs.train_step(exp.objective, exp.hp, exp.student.config, exp.optimizer, sc,
                             exp.student_mesh, shardings, exp.teacher.config)
    results.append(fn(jax.tree.map(jnp.copy, state), exp.step_teacher_params, batch))
  (got_state, got), (want_state, want) = results
  assert float(want["kl_seq"]) > 0
  for key, value in want.items():
    assert float(got[key]) == pytest.approx(float(value), rel=2e-5, abs=1e-6, nan_ok=True), key
  for g, w in zip(jax.tree.leaves(got_state), jax.tree.leaves(want_state)):
    # Adam divides by the gradients' scale: float noise moves parameters ~1e-6
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-4, atol=1e-5)
  window = programs.scorer(exp.student.config, exp.teacher.config, exp.hp, "float32", start)
  every = programs.scorer(exp.student.config, exp.teacher.config, exp.hp, "float32", 0)
  # The batch's KL quantiles: per-row values gathered across microbatches and minibatches.
  kl_rows = np.asarray(every(state.params, exp.teacher.params, batch)["kl_seq"])
  assert len(np.unique(np.round(kl_rows, 4))) > 2
  for q in (10, 50, 90):
    assert float(want[f"kl_seq_q{q}"]) == pytest.approx(np.quantile(kl_rows, q / 100),
                                                         rel=2e-3, abs=1e-4), q
  assert not any(k.startswith("seq/") for k in want)
  for key, value in every(state.params, exp.teacher.params, batch).items():
    np.testing.assert_allclose(np.asarray(window(state.params, exp.teacher.params, batch)[key]),
                               np.asarray(value), rtol=2e-5, atol=1e-5, err_msg=key)


def test_forward_from_a_position_is_the_tail_of_the_whole_forward():
  params = models.init_params(CFG, jax.random.key(0))
  tokens = jax.random.randint(jax.random.key(1), (3, 12), 0, V)
  mask = jnp.arange(12)[None] >= jnp.asarray([[0], [2], [5]])  # left padded
  whole = models.forward(CFG, params, tokens, mask)
  tail = models.forward(CFG, params, tokens, mask, logits_from=7)
  assert tail.shape == (3, 5, V)
  np.testing.assert_allclose(np.asarray(tail), np.asarray(whole[:, 7:]), rtol=1e-5, atol=1e-5)
