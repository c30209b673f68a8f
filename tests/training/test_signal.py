"""Steps that carry no gradient change nothing, and dynamic sampling fills a step with the
groups that carry one (issue: every step carries signal and no step drifts).

References: the contrast of each group is set by hand (constructed task rewards, grpo's
gradient is zero exactly where a group's rewards are tied), and the kept prompts are
recomputed from the iterator's order on the host.
"""
import hashlib
import os
import signal

import jax
import numpy as np
import pytest

from cmdp import data
from cmdp.training import batch as batch_lib
from cmdp.training import checkpoint as ckpt_lib
from cmdp.training import experiment, rollouts, trainer
from cmdp.training.logging import read_metrics
from tests.training.tiny import tiny_config

CONTRAST = np.asarray([1, 0, 0, 0, 1, 1, 0, 1], np.float32)  # groups of 2: yes, no, no, yes
TIED = np.asarray([1, 1, 0, 0, 1, 1, 0, 0], np.float32)  # every group tied


def _fresh(state, shardings):
  """A copy of `state` (the step donates its argument)."""
  return jax.device_put(jax.device_get(state), shardings)


def _setup(optimizer="adamw", skip=True):
  exp = experiment.build(tiny_config("grpo", **{"optimizer.name": optimizer,
                                                "optimizer.skip_zero_grad": skip}))
  state, shardings = trainer.create_state(exp, exp.student.params)
  batch, _ = trainer.make_batch(exp, state.params, exp.train_examples[:4],
                                jax.random.PRNGKey(5), True)
  return exp, state, shardings, batch, exp.make_train_step(exp.hp, shardings)


def _with_rewards(exp, batch, rewards):
  return dict(batch, task_reward=exp.put_batch(rewards))


def _tree_equal(a, b) -> bool:
  return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(jax.device_get(a)),
                                                  jax.tree.leaves(jax.device_get(b))))


@pytest.mark.parametrize("optimizer", ["adam", "adamw"])
def test_a_step_without_gradient_leaves_params_and_optimiser_state_bitwise(optimizer):
  exp, state, shardings, batch, step = _setup(optimizer)
  moved, m1 = step(_fresh(state, shardings), exp.step_teacher_params,
                   _with_rewards(exp, batch, CONTRAST))
  assert m1["skipped"] == 0 and m1["grad_norm"] > 0
  # By hand: rows 0, 1 and 6, 7 have a nonzero leave-one-out advantage, rows 2-5 none.
  assert m1["rows_with_gradient"] == pytest.approx(0.5)
  assert m1["groups_with_contrast"] == pytest.approx(0.5)
  after, m2 = step(_fresh(moved, shardings), exp.step_teacher_params,
                   _with_rewards(exp, batch, TIED))
  assert m2["skipped"] == 1 and m2["grad_norm"] == 0 and m2["update_norm"] == 0
  assert m2["rows_with_gradient"] == 0 and m2["groups_with_contrast"] == 0
  assert _tree_equal(after.params, moved.params)
  assert _tree_equal(after.opt_state, moved.opt_state)  # Adam's moments and count too
  assert int(after.step) == int(moved.step) + 1  # the rollout step is still counted

  # Without the switch Adam's momentum moves the params on the same zero gradient, and an
  # update with a gradient is the same as with it.
  _, _, _, _, step_off = _setup(optimizer, skip=False)
  moved_off, _ = step_off(_fresh(state, shardings), exp.step_teacher_params,
                          _with_rewards(exp, batch, CONTRAST))
  assert _tree_equal(moved_off.params, moved.params)
  assert _tree_equal(moved_off.opt_state, moved.opt_state)
  drifted, m3 = step_off(_fresh(moved_off, shardings), exp.step_teacher_params,
                         _with_rewards(exp, batch, TIED))
  assert m3["grad_norm"] == 0 and m3["update_norm"] > 0 and m3["skipped"] == 0
  assert not _tree_equal(drifted.params, moved.params)


def test_row_signal_program_matches_the_step():
  """The dynamic sampler's per-row signal (no backward pass through the model) is the
  step's: the rows with a nonzero advantage."""
  exp, state, _, batch, _ = _setup()
  got = exp.row_signal(state.params, _with_rewards(exp, batch, CONTRAST), None)
  np.testing.assert_array_equal(got, [1, 1, 0, 0, 0, 0, 1, 1])
  assert not exp.row_signal(state.params, _with_rewards(exp, batch, TIED), None).any()


def _has_contrast(example) -> bool:
  return int(hashlib.md5(example.question.encode()).hexdigest(), 16) % 3 == 0


def _constructed_rewards(completions, group, format_weight=0.0):
  """A right answer on the first row of a group exactly when its question has contrast."""
  del completions, format_weight
  first = [i == 0 or group[i - 1] is not ex for i, ex in enumerate(group)]
  r = np.asarray([float(f and _has_contrast(ex)) for f, ex in zip(first, group)], np.float32)
  return r, r


def _dynamic(monkeypatch, rewards=_constructed_rewards, objective="grpo", **overrides):
  monkeypatch.setattr(batch_lib, "task_rewards", rewards)
  config = tiny_config(objective, **{"dynamic_sampling.enabled": True,
                                  "dynamic_sampling.generation_prompts": 4, **overrides})
  exp = experiment.build(config)
  state, _ = trainer.create_state(exp, exp.student.params)
  it = data.PromptIterator(exp.train_examples, rollouts.draw_prompts(config), seed=config.seed)
  return exp, state, it


def _prompts(exp, batch):
  inputs = np.asarray(jax.device_get(batch["inputs"]))[::exp.hp.group_size]
  return inputs[:, :exp.config.data.max_prompt_len]


def _expected(exp, draws, keep):
  """The first `keep` examples with contrast over `draws` generation batches, in order."""
  it = data.PromptIterator(exp.train_examples, 4, seed=exp.config.seed)
  drawn = [ex for _ in range(draws) for ex in it.next_batch()]
  return [ex for ex in drawn if _has_contrast(ex)][:keep], drawn


def test_dynamic_sampling_keeps_exactly_the_groups_with_contrast_in_order(monkeypatch):
  exp, state, it = _dynamic(monkeypatch, **{"dynamic_sampling.max_generation_batches": 16})
  batch, host = rollouts.next_batch(exp, state, it, 0, True)
  need = exp.config.batch_size // exp.hp.group_size
  want, drawn = _expected(exp, int(host["generation_batches"]), need)
  assert len(want) == need and host["groups_kept"] == need
  # Not one generation batch more than needed: the last one completed the step.
  assert len(_expected(exp, int(host["generation_batches"]) - 1, need)[0]) < need
  np.testing.assert_array_equal(_prompts(exp, batch), exp.encode_prompts(want)[0])
  assert host["contrast_drawn"] == pytest.approx(np.mean([_has_contrast(e) for e in drawn]))
  assert host["generation_batches"] > 1  # a third of the prompts have contrast
  # The step's shape is the configured one, and the iterator moved by the draws only.
  assert batch["mask"].shape[0] == exp.config.batch_size
  assert it.state()["index"] == 4 * int(host["generation_batches"])


def test_dynamic_sampling_at_the_cap(monkeypatch):
  never = lambda completions, group, fw=0.0: (np.zeros(len(group), np.float32),) * 2
  exp, state, it = _dynamic(monkeypatch, never, **{"dynamic_sampling.max_generation_batches": 2})
  batch, host = rollouts.next_batch(exp, state, it, 0, True)
  assert host["generation_batches"] == 2 and host["groups_kept"] == 0
  _, drawn = _expected(exp, 1, 0)  # proceed: the first groups drawn, none with contrast
  np.testing.assert_array_equal(_prompts(exp, batch), exp.encode_prompts(drawn)[0])
  exp, state, it = _dynamic(monkeypatch, never, **{"dynamic_sampling.max_generation_batches": 2,
                                                   "dynamic_sampling.at_cap": "error"})
  with pytest.raises(RuntimeError, match="max_generation_batches=2"):
    rollouts.next_batch(exp, state, it, 0, True)


def _kept_and_trained(monkeypatch, layout):
  """The step's kept prompts, the sampler's host figures and the params after its update."""
  exp, state, it = _dynamic(monkeypatch, **{"dynamic_sampling.max_generation_batches": 16},
                            **layout)
  batch, host = rollouts.next_batch(exp, state, it, 0, True)
  state, shardings = trainer.create_state(exp, exp.student.params)
  state, _ = exp.make_train_step(exp.hp, shardings)(state, exp.step_teacher_params, batch)
  return _prompts(exp, batch), host, jax.device_get(state.params)


@pytest.fixture(scope="module")
def one_device():
  with pytest.MonkeyPatch.context() as monkeypatch:
    return _kept_and_trained(monkeypatch, {"mesh.num_devices": 1})


@pytest.mark.parametrize("mesh", [{"mesh.data": 1, "mesh.fsdp": 8},
                                  {"mesh.data": 2, "mesh.fsdp": 4}])
def test_dynamic_sampling_on_a_mesh_equals_one_device(monkeypatch, mesh, one_device):
  (p1, h1, w1), (p8, h8, w8) = one_device, _kept_and_trained(monkeypatch, mesh)
  np.testing.assert_array_equal(p8, p1)
  assert h8 == h1
  for a, b in zip(jax.tree.leaves(w8), jax.tree.leaves(w1)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def _stepped(monkeypatch, keep, layout):
  """cmdp's step on a dynamically sampled batch, the teacher's logits kept from the signal
  pass or not: the kept prompts, the batch's teacher logits, the params and metrics."""
  exp, state, it = _dynamic(monkeypatch, objective="cmdp",
                            **{"dynamic_sampling.max_generation_batches": 3,
                               "dynamic_sampling.keep_teacher_logits": keep,
                               "optimizer.name": "sgd"}, **layout)
  assert exp.keeps_teacher_logits == keep
  batch, _ = rollouts.next_batch(exp, state, it, 0, True)
  logits = batch.get("teacher_logits")
  state, shardings = trainer.create_state(exp, exp.student.params)
  teacher = exp.step_teacher_params
  if keep:  # the step must not run the teacher: a zeroed one would change the update
    teacher = jax.tree.map(lambda x: x * 0, teacher)
  state, metrics = exp.make_train_step(exp.hp, shardings)(state, teacher, batch)
  return (_prompts(exp, batch), logits, jax.device_get(state.params),
          jax.device_get(metrics), exp)


@pytest.mark.parametrize("layout", [
    {"mesh.num_devices": 1},
    {"mesh.num_devices": 1, "grad_accum_steps": 2, "ppo_minibatches": 2},
    {"mesh.data": 2, "mesh.fsdp": 4, "grad_accum_steps": 2, "ppo_minibatches": 2}])
def test_kept_teacher_logits_give_the_same_update(monkeypatch, layout):
  """The step on the signal pass's teacher logits (no teacher forward of its own) is the
  step that runs the teacher: same kept prompts, params and metrics; the logits stay on
  the devices, rows over the batch axes, in rollout.teacher_logits_dtype. The teacher's
  forward over a generation batch and over a microbatch round apart (other shapes), so
  the optimiser is sgd: Adam's first updates, about lr x the gradient's sign, would turn
  the rounding of a near-zero gradient entry into a difference of lr."""
  p_off, none, w_off, m_off, _ = _stepped(monkeypatch, False, layout)
  p_on, logits, w_on, m_on, exp = _stepped(monkeypatch, True, layout)
  assert none is None
  np.testing.assert_array_equal(p_on, p_off)
  vocab = exp.teacher.config.output_vocab or exp.teacher.config.vocab_size
  # The response window: the sampler's max_new_tokens columns after the prompt.
  assert logits.shape == (exp.config.batch_size, exp.config.rollout.max_new_tokens, vocab)
  assert logits.dtype == np.float32
  assert logits.sharding.is_equivalent_to(exp.batch_sharding(), logits.ndim)
  for a, b in zip(jax.tree.leaves(w_on), jax.tree.leaves(w_off)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  assert m_on.keys() == m_off.keys()
  for key in m_off:
    np.testing.assert_allclose(m_on[key], m_off[key], rtol=1e-5, atol=1e-7, err_msg=key)


def test_kept_teacher_logits_are_ignored_for_an_objective_without_teacher(monkeypatch):
  exp, _, _ = _dynamic(monkeypatch, **{"dynamic_sampling.keep_teacher_logits": True})
  assert not exp.keeps_teacher_logits  # grpo reads no teacher


@pytest.mark.parametrize("keep", [False, True])
def test_dynamic_sampling_resumed_equals_uninterrupted(tmp_path, keep):
  """cmdp on the tiny models: contrast comes from the costs (some groups straddle d)."""
  # Without the boundary term, so that some groups lack contrast and are resampled.
  flags = {"dynamic_sampling.enabled": True, "dynamic_sampling.max_generation_batches": 3,
           "dynamic_sampling.keep_teacher_logits": keep, "loss.boundary_width": 0.0,
           "num_steps": 4, "checkpoint_async": False}

  def run(name, evaluate_fn=lambda *a: {}, **more):
    trainer.train(tiny_config(**flags, **more), str(tmp_path / name), evaluate_fn=evaluate_fn)
    return read_metrics(str(tmp_path / name))

  straight = run("straight")

  def preempt_after_step_2(exp, params, step, hp):
    del exp, params, hp
    if step == 2:
      os.kill(os.getpid(), signal.SIGTERM)
    return {}

  first = run("resumed", preempt_after_step_2, eval_every=1)
  assert [r["step"] for r in first] == [1, 2]
  assert ckpt_lib.Checkpointer(str(tmp_path / "resumed")).latest_step() == 2
  resumed = run("resumed")
  assert [r["step"] for r in resumed] == [1, 2, 3, 4]
  assert any(r["train/generation_batches"] > 1 for r in straight)  # it did resample
  for a, b in zip(straight[2:], resumed[2:]):
    for key, v in a.items():
      if key.startswith("train/"):
        assert b[key] == pytest.approx(v, rel=1e-6, abs=1e-7), key
