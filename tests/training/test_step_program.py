"""The update program: memory from XLA's own analysis, PPO epochs, sampler-trainer mismatch."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cmdp import models
from cmdp.objectives import ObjectiveConfig, get_objective
from cmdp.training import step as step_lib
from cmdp.training import trainer, experiment
from tests.training.tiny import tiny_config

B, L, V = 16, 64, 16_384


def _logits_dominated_step(grad_accum_steps):
  """The compiled cmdp step of a 1-layer, 64-wide student and teacher over a 16k
  vocabulary: the [B, L, V] logits dominate its memory."""
  cfg = models.ModelConfig(vocab_size=V, hidden_size=64, intermediate_size=128, num_layers=1,
                           num_heads=2, num_kv_heads=1, head_dim=32)
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
  exp, state, shardings, batch = _tiny_step(
      tmp_path, ppo_epochs=3, ppo_minibatches=2, **{"optimizer.learning_rate": 0.05})
  _, m = exp.make_train_step(exp.hp, shardings)(state, exp.step_teacher_params, batch)
  assert float(m["mismatch_abs_logprob"]) < 1e-4  # measured before the first update
  assert float(m["approx_kl_old_last_epoch"]) > 1e-4
  assert float(m["clip_fraction_last_epoch"]) > 0.0
  assert float(m["nonfinite"]) == 0.0
